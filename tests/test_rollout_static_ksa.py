"""StaticEngine on KSA policies (static ring + summary storage, ksa/static_cache.py) against two
references computed another way: the loop engine with its growing `ksa.KSACache`, and a full
recomputation of the KSA forward (dense-mask reference attention) over prompt + response so far."""

from __future__ import annotations

import pytest
import torch

import ksa
from golong.rollout.base import SamplingParams
from golong.rollout.kvmem import kv_bytes_per_sequence
from golong.rollout.loop import LoopEngine
from golong.rollout.static import StaticEngine
from ksa.modeling import CACHE_KEY
from ksa.static_shared import SharedKSALayer
from tests.test_rollout_static import hf_greedy, make_model

TEXT = "the key of record 12 is 777 and the city of the needle in the haystack is the answer to find first"
LENGTHS = (5, 13, 9, 20, 16)  # crossing chunk boundaries (chunk 4) at different offsets
NEW = 14


# tiny matmuls on 2 shared cores run ~1000x slower with 2 threads fighting other processes
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    ids = tiny_tokenizer.encode(TEXT)
    assert len(ids) >= max(LENGTHS)
    return [ids[:k] for k in LENGTHS]


def ksa_model(tok, arch="qwen3", **settings):
    windows = settings.pop("windows", [1, 1000])
    base = make_model(tok, arch, layers=len(windows))
    cfg = ksa.KSAConfig(chunk=4, summaries=settings.pop("summaries", 1), windows=windows,
                        impl=settings.pop("impl", "reference"), **settings)
    model = ksa.convert_model(base, cfg)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # summary parameters away from their converted start, so summaries matter
        model.summary_embed.weight.copy_(torch.randn(model.summary_embed.weight.shape, generator=gen))
        for name, p in model.named_parameters():
            if "summary_" in name and p.dim() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def recompute_greedy(model, prompt: list[int], new: int, eos: set[int]) -> list[int]:
    """Greedy continuation by re-running the whole KSA forward (no cache) for every token."""
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(new):
            tok = int(model(torch.tensor([ids], device=model.device)).logits[0, -1].argmax())
            out.append(tok)
            if tok in eos:
                break
            ids.append(tok)
    return out


CASES = {
    "plain": {},
    "two_summaries": {"summaries": 2},
    "summary_qkv_mix": {"summary_qkv": True, "mix_coeff": 0.5},
    "summary_norm": {"summary_norm": True, "summary_qkv": True},
    "summaries_hidden": {"summaries_visible": False},
    # a ring layer after a ring layer: the second's summary K/V come from the first's summary-column
    # attention (with two layers only text-column attention reaches the tokens)
    "two_ring_layers": {"windows": [1, 1, 1000], "summary_qkv": True},
}


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_ksa_greedy_equals_recomputation_and_loop_engine(tiny_tokenizer, prompts, case, share):
    """share: each group's prompt stored once (ksa/static_shared.py), else a copy per row (ksa/static_cache.py)."""
    model = ksa_model(tiny_tokenizer, **CASES[case])
    layers = model.config.ksa_windows
    assert layers[0] * 4 < max(LENGTHS) + NEW <= layers[-1] * 4  # ring layers that evict, one full layer
    eos = {tiny_tokenizer.eos_token_id}
    refs = [recompute_greedy(model, p, NEW, eos) for p in prompts]
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0)
    hf = LoopEngine(model, tiny_tokenizer).generate(prompts, 2, greedy)
    for max_batch in (16, 3):  # all rows at once; 3 slots: continuous batching, sibling copies, moves
        engine = StaticEngine(model, tiny_tokenizer, max_batch=max_batch, max_len=64, share_prefix=share)
        assert engine.ksa and engine.share == share
        out = engine.generate(prompts, 2, greedy)
        assert all(isinstance(layer, SharedKSALayer) == share for layer in engine.ksa_layers)
        assert [[c.response_ids for c in g] for g in out] == [[r, r] for r in refs]
        assert [[c.response_ids for c in g] for g in out] == [[c.response_ids for c in g] for g in hf]
        for a, b in zip(out, hf, strict=True):
            for ca, cb in zip(a, b, strict=True):
                torch.testing.assert_close(torch.tensor(ca.logprobs), torch.tensor(cb.logprobs), atol=1e-4, rtol=0)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("case", ["two_summaries", "summary_norm", "two_ring_layers"])
def test_ksa_summaries_every_step_changes_no_token(tiny_tokenizer, prompts, case, share):
    """ksa_summaries_every_step: every step carries the summary columns (rows that complete no chunk
    discard theirs). Greedy tokens equal re-running the whole KSA forward; sampled tokens and log-probs
    equal the engine's default steps (summary columns only where some row ends a chunk); every step
    has 1 + S query columns, where by default some steps have 1."""
    model = ksa_model(tiny_tokenizer, **CASES[case])
    eos = {tiny_tokenizer.eos_token_id}
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0)
    sampled = SamplingParams(max_new_tokens=NEW, temperature=1.0, top_p=0.9, seed=4)
    runs, columns = {}, {}
    for every in (True, False):
        engine = StaticEngine(model, tiny_tokenizer, max_batch=3, max_len=64, share_prefix=share,
                              ksa_summaries_every_step=every)
        seen = []
        step = engine._step_columns
        engine._step_columns = lambda pos, step=step, seen=seen: seen.append(step(pos)) or seen[-1]
        runs[every] = [engine.generate(prompts, 2, p) for p in (greedy, sampled)]
        columns[every] = set(seen)
    S = model.config.ksa_summaries
    assert columns == {True: {1 + S}, False: {1, 1 + S}}
    for every in (True, False):  # the engine's count of steps that carried summary columns
        engine = StaticEngine(model, tiny_tokenizer, max_batch=3, max_len=64, share_prefix=share,
                              ksa_summaries_every_step=every)
        engine.generate(prompts, 2, greedy)
        summary, steps = engine.stats["summary_steps"], engine.stats["decode_steps"]
        assert (summary == steps) if every else (0 < summary < steps)
    refs = [recompute_greedy(model, p, NEW, eos) for p in prompts]
    assert [[c.response_ids for c in g] for g in runs[True][0]] == [[r, r] for r in refs]
    for a, b in zip(sum(runs[True][1], []), sum(runs[False][1], []), strict=True):
        assert a.response_ids == b.response_ids
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)


def test_ksa_sampling_reproducible_whatever_the_batch(tiny_tokenizer, prompts):
    """A sample's tokens depend on (seed, prompt, sample) only: not on the slot count, and the same as
    the loop engine draws (both use the same counter-based streams)."""
    model = ksa_model(tiny_tokenizer, summary_qkv=True)
    params = SamplingParams(max_new_tokens=NEW, temperature=1.0, seed=11)

    def tokens(out):
        return [[c.response_ids for c in g] for g in out]

    runs = [tokens(StaticEngine(model, tiny_tokenizer, max_batch=b, max_len=64).generate(prompts, 3, params)) for b in (16, 2)]
    assert runs[0] == runs[1] == tokens(LoopEngine(model, tiny_tokenizer).generate(prompts, 3, params))
    assert len({tuple(r) for g in runs[0] for r in g}) > 5


def test_ksa_storage_is_bounded_and_budget_admits_more_ksa_rows(tiny_tokenizer, prompts):
    """Ring layers hold (W+1)*C text slots whatever the length; under one K/V budget the KSA policy
    gets more rows than the full-attention model with the same shape."""
    full = make_model(tiny_tokenizer, "qwen3").eval()
    model = ksa_model(tiny_tokenizer)
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0)
    probe = StaticEngine(model, tiny_tokenizer, max_batch=64, max_len=4096, share_prefix=False)
    probe.generate(prompts[:1], 1, greedy)
    ring = probe.ksa_layers[0]
    assert not ring.full and ring.text_slots == 2 * 4
    budget_rows = 10
    length = 1024
    budget_gb = budget_rows * StaticEngine(full, tiny_tokenizer).row_bytes(length) / 1024**3
    engines = [StaticEngine(m, tiny_tokenizer, max_batch=64, max_len=length, kv_budget_gb=budget_gb, share_prefix=False)
               for m in (full, model)]  # full attention with a copy of the prompt per row, as KSA rows have
    long_prompt = [prompts[-1] * 50]  # 800 tokens: storage for 1024
    for e in engines:  # 16 rows wanted
        e.generate(long_prompt * 2, 8, SamplingParams(max_new_tokens=2, temperature=0))
        assert e.stats["concurrency"] == e.rows
    assert engines[0].rows <= budget_rows < engines[1].rows
    assert engines[1].cache_bytes() <= budget_gb * 1024**3


# chunk 4, ring window 1 chunk: prompts inside the window and past it, whole chunks and not
PACK_LENGTHS = (3, 22, 9, 16, 6, 13)
PACK_CASES = {
    "summary_qkv_norm_mix": {"summary_qkv": True, "summary_norm": True, "mix_coeff": 0.5},
    "two_summaries": {"summaries": 2},
    "flex_kernel": {"impl": "flex"},
    "triton_kernel": {"impl": "triton"},  # Triton's interpreter on the CPU
}


def prefilled_engines(model, tok, prompts, share: bool = False) -> dict[str, StaticEngine]:
    """Engines that prefilled `prompts` (one sample each, one token drawn, no decode step) with all
    prompts in one forward, in packs of at most 25 tokens, and one prompt per forward."""
    engines = {}
    for name, budget in (("one_forward", 8192), ("packs_of_25", 25), ("per_prompt", 1)):
        engine = StaticEngine(model, tok, max_batch=16, max_len=64, prefill_chunk=budget, share_prefix=share)
        engine.generate(prompts, 1, SamplingParams(max_new_tokens=1, temperature=0))
        engines[name] = engine
    return engines


@pytest.mark.parametrize("case", list(PACK_CASES))
def test_ksa_batched_prefill_storage_equals_per_prompt_and_model_forward(tiny_tokenizer, case):
    """The ring, summary store and full-layer K/V that a packed prefill writes equal one prompt per
    forward, and the model's own forward into a `ksa.KSACache`, at the slot of each stored position."""
    model = ksa_model(tiny_tokenizer, **PACK_CASES[case])
    ids = tiny_tokenizer.encode(TEXT)
    prompts = [ids[:k] for k in PACK_LENGTHS]
    engines = prefilled_engines(model, tiny_tokenizer, prompts)
    for name, forwards in (("one_forward", 1), ("packs_of_25", 3), ("per_prompt", len(prompts))):
        st = engines[name].stats
        assert (st["prefill_batches"], st["prefills"], st["prefill_tokens"]) == (forwards, len(prompts), sum(PACK_LENGTHS))
        assert st["prefill_max_prompts"] == -(-len(prompts) // forwards)
    single, packed = engines["per_prompt"], engines["one_forward"]
    for name in ("one_forward", "packs_of_25"):
        for a, b in zip(engines[name].ksa_layers, single.ksa_layers, strict=True):
            for x, y in ((a.k, b.k), (a.v, b.v), (a.sk, b.sk), (a.sv, b.sv)):
                if x is not None:
                    torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    C, S = model.config.ksa_chunk, model.config.ksa_summaries
    kinds = [(layer.full, layer.text_slots) for layer in packed.ksa_layers]
    assert kinds == [(False, 2 * C), (True, packed.cap_len)]  # one ring layer, one full layer
    for row, prompt in enumerate(prompts):  # slot i holds prompt i (admitted in order)
        cache = ksa.KSACache(model.config, max_length=packed.cap_len)
        with torch.no_grad():
            model(input_ids=torch.tensor([prompt]), use_cache=True, **{CACHE_KEY: cache})
        for static, ref in zip(packed.ksa_layers, cache.layers, strict=True):
            held = ref.text_pos[0]
            stored = held[held >= 0]  # the positions the model's cache keeps, in its slots
            assert sorted(stored.tolist()) == list(range(0 if ref.full else max(0, (len(prompt) // C - 1) * C), len(prompt)))
            slots = stored if static.full else stored % static.text_slots
            for mine, theirs in ((static.k, ref.keys), (static.v, ref.values)):
                torch.testing.assert_close(mine[row, :, slots].transpose(0, 1), theirs[0, held >= 0], atol=1e-5, rtol=1e-5)
            m = (len(prompt) // C) * S
            if not static.full and m:
                assert int(ref.sum_valid[0].sum()) == m
                for mine, theirs in ((static.sk, ref.sum_keys), (static.sv, ref.sum_values)):
                    torch.testing.assert_close(mine[row, :, :m].transpose(0, 1), theirs[0, :m], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["summary_qkv_norm_mix", "two_summaries"])
def test_ksa_shared_prefill_storage_equals_per_row_storage(tiny_tokenizer, case):
    """Shared layout: what a packed prefill writes into a block's prefix rows equals one prompt per
    forward, and, position by position, what the per-row layout keeps (prefix text of positions >= t0
    at index p - t0, summaries of the prompt's whole chunks); own rows stay empty until decoding."""
    from ksa.static_cache import prompt_start

    model = ksa_model(tiny_tokenizer, **PACK_CASES[case])
    ids = tiny_tokenizer.encode(TEXT)
    prompts = [ids[:k] for k in PACK_LENGTHS]
    shared = prefilled_engines(model, tiny_tokenizer, prompts, share=True)
    rows = prefilled_engines(model, tiny_tokenizer, prompts)["per_prompt"]
    for name in ("packs_of_25", "per_prompt"):
        for a, b in zip(shared[name].ksa_layers, shared["one_forward"].ksa_layers, strict=True):
            for x, y in zip(a.storage(), b.storage(), strict=True):
                if x is not None:
                    torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    C, S = model.config.ksa_chunk, model.config.ksa_summaries
    engine = shared["one_forward"]
    assert engine.blocks >= len(prompts) and [layer.full for layer in engine.ksa_layers] == [False, True]
    for home, prompt in enumerate(prompts):  # one sample per prompt: block i holds prompt i
        P = len(prompt)
        for mine, theirs in zip(engine.ksa_layers, rows.ksa_layers, strict=True):
            t0 = prompt_start(mine.full, P, C, mine.window)
            p = torch.arange(t0, P)
            slots = p if theirs.full else p % theirs.text_slots
            torch.testing.assert_close(mine.pk[home, :, p - t0], theirs.k[home, :, slots], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mine.pv[home, :, p - t0], theirs.v[home, :, slots], atol=1e-5, rtol=1e-5)
            m = (P // C) * S
            if not mine.full and m:
                torch.testing.assert_close(mine.psk[home, :, :m], theirs.sk[home, :, :m], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(mine.psv[home, :, :m], theirs.sv[home, :, :m], atol=1e-5, rtol=1e-5)
            assert not mine.k.any() and not mine.v.any()


def test_ksa_shared_storage_holds_prompt_once(tiny_tokenizer):
    """G = 8 samples of two 1000-token prompts: the shared layout stores and reads each prompt once per
    group, so its K/V storage is a fraction of the per-row layout's (own rows are bucketed to 256
    response tokens); under one K/V budget it runs all 16 rows at once where the per-row layout
    cannot; the tokens are the same."""
    model = ksa_model(tiny_tokenizer)
    ids = tiny_tokenizer.encode(TEXT)
    prompts = [(ids * 60)[:1000], (ids * 60)[3:1003]]
    greedy = SamplingParams(max_new_tokens=6, temperature=0)
    engines = {s: StaticEngine(model, tiny_tokenizer, max_batch=16, max_len=1100, share_prefix=s) for s in (True, False)}
    out = {s: e.generate(prompts, 8, greedy) for s, e in engines.items()}
    assert [[c.response_ids for c in g] for g in out[True]] == [[c.response_ids for c in g] for g in out[False]]
    assert engines[True].cache_bytes() < engines[False].cache_bytes() / 2
    budget_gb = engines[True].cache_bytes() * 1.05 / 1024**3
    tight = {s: StaticEngine(model, tiny_tokenizer, max_batch=16, max_len=1100, share_prefix=s, kv_budget_gb=budget_gb)
             for s in (True, False)}
    for s, e in tight.items():
        assert [[c.response_ids for c in g] for g in e.generate(prompts, 8, greedy)] == [[c.response_ids for c in g] for g in out[s]]
        assert e.cache_bytes() <= budget_gb * 1024**3
    assert tight[True].stats["concurrency"] == 16 > tight[False].stats["concurrency"]
    # K/V a step must read: per row, what the ring + summary layout holds at its length (the formula
    # tests/test_ksa_loop.py checks against ksa.KSACache); shared, each prompt's part once per group
    plain = engines[False]
    fed = [len(c.response_ids) - 1 for g in out[False] for c in g]  # decode steps of each row
    starts = [len(p) for p in prompts for _ in range(8)]
    assert plain.stats["kv_bytes_read"] == sum(kv_bytes_per_sequence(model.config, p + j, 4)
                                               for p, f in zip(starts, fed, strict=True) for j in range(f))
    assert engines[True].stats["kv_bytes_read"] < plain.stats["kv_bytes_read"] / 3


def test_ksa_batched_prefill_greedy_equals_per_prompt_and_generate(tiny_tokenizer):
    """Greedy tokens and sampler log-probs after packed prefills equal one prompt per forward and
    `model.generate` (the KSA model's own cache), G = 2 samples per prompt, continuous batching."""
    model = ksa_model(tiny_tokenizer, summary_qkv=True, mix_coeff=0.5)
    ids = tiny_tokenizer.encode(TEXT)
    prompts = [ids[:k] for k in PACK_LENGTHS]
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0)
    refs = [hf_greedy(model, tiny_tokenizer, p, NEW) for p in prompts]
    runs = {}
    for budget, max_batch in ((8192, 16), (25, 16), (1, 16), (8192, 5)):
        engine = StaticEngine(model, tiny_tokenizer, max_batch=max_batch, max_len=64, prefill_chunk=budget)
        runs[budget, max_batch] = engine.generate(prompts, 2, greedy)
        if max_batch == 16:  # with 5 slots a prompt whose live samples all finished is prefilled again
            assert engine.stats["prefills"] == len(prompts)
            assert engine.stats["prefill_batches"] == {8192: 1, 25: 3, 1: len(prompts)}[budget]
    single = runs[1, 16]
    for out in runs.values():
        for g, ref, gs in zip(out, refs, single, strict=True):
            assert [c.response_ids for c in g] == [ref, ref]
            for c, cs in zip(g, gs, strict=True):
                torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(cs.logprobs), atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ksa_cuda_graphs_greedy_equals_recomputation(tiny_tokenizer, prompts):
    """The same KSA decode captured as CUDA graphs (float32 on the GPU), summary steps included."""
    model = ksa_model(tiny_tokenizer, summary_qkv=True, mix_coeff=0.5).to("cuda")
    eos = {tiny_tokenizer.eos_token_id}
    refs = [recompute_greedy(model, p, NEW, eos) for p in prompts]
    for max_batch in (16, 3):
        engine = StaticEngine(model, tiny_tokenizer, max_batch=max_batch, max_len=64)
        out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=NEW, temperature=0))
        assert engine.use_graphs and {key[0][-1] for key in engine._graphs} == {1, 2}  # text-only and summary steps
        assert [[c.response_ids for c in g] for g in out] == [[r, r] for r in refs]
