"""Shared-prefix (cascade) decode in the static engine (golong/rollout/prefix.py, share_prefix).

References computed another way: the decode attention against a dense float64 softmax over each row's
prompt + response keys laid end to end; the engine's tokens against the same engine without sharing
and against transformers' generate; K/V read and stored against formulas from the response lengths.
"""

from __future__ import annotations

import copy

import pytest
import torch

from golong.rollout import EngineConfig, make_engine
from golong.rollout.base import SamplingParams
from golong.rollout.kvmem import kv_bytes_per_sequence
from golong.rollout.prefix import cascade_attention, length_bias
from golong.rollout.static import StaticEngine, length_bucket
from tests.conftest import ENGINE_NEW as NEW
from tests.conftest import ENGINE_PROMPT_LENGTHS as LENGTHS
from tests.test_rollout_static import make_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the attention alone -------------------------------------------------------------------------
def dense_reference(q, kp, vp, plen, ko, vo, olen, scale):
    """Per row: softmax over cat(prefix[: plen[block]], own[: olen[row]]) in float64, each query head
    against its KV head (GQA), written out row by row."""
    b, kvh, g, d = q.shape
    width = b // kp.shape[0]
    out = torch.zeros(b, kvh, g, d, dtype=torch.float64)
    for r in range(b):
        blk = r // width
        keys = torch.cat([kp[blk, :, : plen[blk]], ko[r, :, : olen[r]]], 1).double()  # [kvh, L, d]
        vals = torch.cat([vp[blk, :, : plen[blk]], vo[r, :, : olen[r]]], 1).double()
        probs = torch.softmax(q[r].double() @ keys.transpose(-1, -2) * scale, -1)
        out[r] = probs @ vals
    return out


@pytest.mark.parametrize(("dtype", "q_scale", "atol"), [(torch.float32, 1.0, 1e-5), (torch.float32, 100.0, 1e-4),
                                                        (torch.bfloat16, 1.0, 3e-2)])
def test_cascade_attention_equals_dense_softmax(dtype, q_scale, atol):
    """3 blocks of 4 rows, 2 KV heads x 3 query heads, ragged prefix lengths (one block without any
    prefix: a free block in the batch) and ragged own lengths. q_scale 100 puts scores in the hundreds,
    where exp without the max shift overflows float32."""
    gen = torch.Generator().manual_seed(0)
    blocks, width, kvh, g, d, P, R = 3, 4, 2, 3, 16, 24, 10
    b = blocks * width
    q = (torch.randn(b, kvh, g, d, generator=gen) * q_scale).to(dtype)
    kp, vp = (torch.randn(blocks, kvh, P, d, generator=gen).to(dtype) for _ in range(2))
    ko, vo = (torch.randn(b, kvh, R, d, generator=gen).to(dtype) for _ in range(2))
    plen = torch.tensor([17, 0, 24])
    olen = torch.tensor([1, 4, 10, 2, 3, 3, 7, 1, 9, 5, 6, 8])
    scale = d**-0.5
    out = cascade_attention(q, kp, vp, length_bias(plen, P), ko, vo, length_bias(olen, R), scale)
    ref = dense_reference(q, kp, vp, plen, ko, vo, olen, scale)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=0)


# --- the engine ----------------------------------------------------------------------------------
def tokens(out):
    return [[c.response_ids for c in g] for g in out]


@pytest.mark.parametrize(("n", "max_batch", "chunk"), [(1, 2, 8192), (3, 4, 8192), (3, 8, 4), (4, 8, 8192), (4, 3, 8192)])
def test_greedy_shared_equals_unshared_equals_generate(stop_model, tiny_tokenizer, stop_prompts, n, max_batch, chunk):
    """5 stop_prompts of 3-12 tokens, G = n, fewer slots than rows (continuous batching); chunk 4 sends the
    stop_prompts through the chunked single-prompt prefill; G=4 on 3 slots splits a group into blocks of 3 + 1."""
    model, refs = stop_model
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0)
    runs = {}
    for share in (True, False):
        engine = StaticEngine(model, tiny_tokenizer, max_batch=max_batch, max_len=40, prefill_chunk=chunk, share_prefix=share)
        runs[share] = engine.generate(stop_prompts, n, greedy)
        assert engine.share == share and engine.stats["concurrency"] <= max_batch
        if share and n <= max_batch:  # each prompt prefilled once into its block, never copied
            assert (engine.stats["prefills"], engine.stats["prompt_copies"]) == (len(stop_prompts), 0)
    assert tokens(runs[True]) == tokens(runs[False]) == [[r] * n for r in refs]
    stops = [c.finish_reason for g in runs[True] for c in g]
    assert stops == [c.finish_reason for g in runs[False] for c in g] and {"stop", "length"} <= set(stops)


def test_sampled_tokens_identical_with_and_without_sharing(tiny_tokenizer, stop_prompts):
    """The counter-based sampler keyed by (seed, prompt, sample, step): the same tokens and log-probs
    whether the prompt is shared; rows of one group stop at different steps (their slots idle) and
    more groups than blocks run (3 blocks of 4 for 5 groups)."""
    model = make_model(tiny_tokenizer, "llama")
    model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, *range(40, 80)]  # frequent stops
    params = SamplingParams(max_new_tokens=NEW, temperature=1.0, top_p=0.95, seed=11)
    outs = [StaticEngine(model, tiny_tokenizer, max_batch=12, max_len=40, share_prefix=s).generate(stop_prompts, 4, params)
            for s in (True, False)]
    assert tokens(outs[0]) == tokens(outs[1])
    for a, b in zip(sum(outs[0], []), sum(outs[1], []), strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)
    assert any(len({len(c.response_ids) for c in g}) > 1 for g in outs[0])  # a group's rows end apart
    assert len({tuple(c.response_ids) for c in outs[0][0]}) > 1


def test_prefix_stored_and_read_once_per_group(tiny_tokenizer, stop_prompts):
    """All 5 groups of 4 rows fit at once. Each prompt's K/V is written once, into its block's prefix
    row, and equals the K/V cache of transformers' own forward over the prompt; each step reads a
    group's prompt once: kv_tokens_read = sum over groups of prompt * (steps the group is live) +
    each row's own response entries (0 + 1 + ... over its fed tokens), against prompt + own for every
    row unshared. Storage: a prefix row per block + a response row per slot."""
    model = make_model(tiny_tokenizer, "qwen3")
    model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, *range(40, 80)]
    params = SamplingParams(max_new_tokens=NEW, temperature=1.0, seed=2)
    shared, plain = (StaticEngine(model, tiny_tokenizer, max_batch=32, max_len=64, share_prefix=s) for s in (True, False))
    written = []  # (prompt, K per layer, V per layer) as each prefill left its home
    prefill = shared._prefill_many

    def spy(batch, homes, stats):
        logits = prefill(batch, homes, stats)
        for prompt, home in zip(batch, homes, strict=True):
            written.append((prompt, [t[home, :, : len(prompt)].clone() for t in shared.prompt_k],
                            [t[home, :, : len(prompt)].clone() for t in shared.prompt_v]))
        return logits

    shared._prefill_many = spy
    out, out_plain = shared.generate(stop_prompts, 4, params), plain.generate(stop_prompts, 4, params)
    assert tokens(out) == tokens(out_plain)
    assert sorted(len(p) for p, _, _ in written) == sorted(LENGTHS) and shared.stats["prompt_copies"] == 0
    for prompt, ks, vs in written:
        with torch.no_grad():
            cache = model(torch.tensor([prompt]), use_cache=True).past_key_values
        for layer, k, v in zip(cache.layers, ks, vs, strict=True):
            torch.testing.assert_close(k, layer.keys[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v, layer.values[0], atol=1e-5, rtol=1e-5)
    fed = [[len(c.response_ids) - 1 for c in g] for g in out]  # tokens a row feeds back (the last is not)
    own = sum(f * (f - 1) // 2 for g in fed for f in g)
    assert shared.stats["kv_tokens_read"] == sum(len(p) * max(g) for p, g in zip(stop_prompts, fed, strict=True)) + own
    assert plain.stats["kv_tokens_read"] == sum(len(p) * f for p, g in zip(stop_prompts, fed, strict=True) for f in g) + own
    assert plain.stats["prompt_copies"] == 5 * 3
    per_entry = kv_bytes_per_sequence(model.config, 1, 4)  # K and V of one token in every layer, float32
    for e in (shared, plain):
        assert e.stats["kv_bytes_read"] == e.stats["kv_tokens_read"] * per_entry
    prefix_len, own_len = length_bucket(max(LENGTHS), 64), length_bucket(NEW, 64)
    assert (shared.blocks, shared.rows) == (8, 32)  # 5 groups -> bucket 8; 32 rows = 8 blocks of 4
    assert shared.cache_bytes() == per_entry * (8 * prefix_len + 32 * own_len)
    assert plain.cache_bytes() == per_entry * 32 * length_bucket(max(LENGTHS) + NEW, 64)


def test_budget_admits_more_rows_when_sharing(tiny_tokenizer, stop_prompts):
    """Under one K/V budget (10 unshared rows of prompt + response) the shared layout runs more rows,
    and its storage stays within the budget; a budget that holds no prompt + response is one line."""
    model = make_model(tiny_tokenizer, "qwen3")
    long_prompts = [stop_prompts[-1] * 40, stop_prompts[-2] * 40]  # 280 / 480 tokens
    plain_row = StaticEngine(model, tiny_tokenizer).row_bytes(length_bucket(480 + 8, 4096))
    budget_gb = 10 * plain_row / 1024**3
    engines = [StaticEngine(model, tiny_tokenizer, max_batch=64, max_len=4096, kv_budget_gb=budget_gb, share_prefix=s)
               for s in (True, False)]
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    outs = [e.generate(long_prompts, 8, greedy) for e in engines]
    assert tokens(outs[0]) == tokens(outs[1])
    shared, plain = engines
    assert plain.stats["concurrency"] <= 10 < shared.stats["concurrency"] == 16
    assert shared.cache_bytes() <= budget_gb * 1024**3 and plain.cache_bytes() <= budget_gb * 1024**3
    # a budget of one prompt + 2 responses: each group of 4 runs as 2 blocks of 2, one block at a time
    two = shared.row_bytes(length_bucket(480, 4096)) + 2 * shared.row_bytes(length_bucket(8, 4096))
    narrow = StaticEngine(model, tiny_tokenizer, max_batch=64, max_len=4096, kv_budget_gb=two / 1024**3)
    assert tokens(narrow.generate(long_prompts, 4, greedy)) == [g[:4] for g in tokens(outs[1])]
    assert (narrow.rows, narrow.blocks, narrow.stats["concurrency"], narrow.stats["prefills"]) == (2, 1, 2, 4)
    tiny = StaticEngine(model, tiny_tokenizer, max_len=4096, kv_budget_gb=plain_row / 4 / 1024**3)
    with pytest.raises(ValueError, match="kv_budget_gb"):
        tiny.generate(long_prompts, 2, greedy)


def test_one_engine_across_group_sizes(stop_model, tiny_tokenizer, stop_prompts):
    """Storage is kept across calls: evaluation (G=1), a GRPO batch (G=4), a mix of 2 stop_prompts (G=3)
    on one engine give the greedy references each time."""
    model, refs = stop_model
    engine = StaticEngine(model, tiny_tokenizer, max_batch=8, max_len=40)
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0)
    for batch, n in ((stop_prompts, 1), (stop_prompts, 4), (stop_prompts[3:], 3), (stop_prompts[:2], 1)):
        want = [[refs[stop_prompts.index(p)]] * n for p in batch]
        assert tokens(engine.generate(batch, n, greedy)) == want
    assert (engine.blocks, engine.rows) == (8, 8)  # grown by the first call, reused by the others


def test_switch_from_engine_config_ksa_too(tiny_tokenizer):
    model = make_model(tiny_tokenizer, "qwen3")
    assert make_engine(EngineConfig("static"), model, tiny_tokenizer).share
    assert not make_engine(EngineConfig("static", share_prefix=False), model, tiny_tokenizer).share
    import ksa

    ksa_model = ksa.convert_model(make_model(tiny_tokenizer, "qwen3"), ksa.KSAConfig(chunk=4, windows=[1, 1000], impl="reference"))
    assert StaticEngine(ksa_model, tiny_tokenizer).share  # KSA policies: ksa/static_shared.py
    assert not StaticEngine(ksa_model, tiny_tokenizer, share_prefix=False).share


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_shared_equals_unshared(stop_model, tiny_tokenizer, stop_prompts):
    """Both layouts captured as CUDA graphs (float32 on the GPU): greedy = generate, sampled equal."""
    model, refs = stop_model
    model = copy.deepcopy(model).to("cuda")
    runs = {}
    for share in (True, False):
        engine = StaticEngine(model, tiny_tokenizer, max_batch=8, max_len=300, share_prefix=share)
        greedy = engine.generate(stop_prompts, 3, SamplingParams(max_new_tokens=NEW, temperature=0))
        sampled = engine.generate(stop_prompts, 3, SamplingParams(max_new_tokens=NEW, temperature=0.9, seed=5))
        assert engine.use_graphs and {len(key[0]) for key in engine._graphs} == {4 if share else 3}
        assert tokens(greedy) == [[r] * 3 for r in refs]
        runs[share] = sampled
    assert tokens(runs[True]) == tokens(runs[False])
