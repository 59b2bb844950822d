"""StaticEngine (static KV cache, own decode loop, continuous batching) against plain transformers.

References are computed another way: greedy tokens by `model.generate` one prompt at a time, log-probs
by a teacher-forced forward over prompt + response with the sampler's filter applied by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch

from golong.rollout.base import SamplingParams
from golong.rollout.sampling import row_key, sample_rows, uniform_noise
from golong.rollout.static import StaticEngine, length_bucket

TEXT = "the key of record 12 is 777 and the city"
LENGTHS = (3, 9, 5, 12)


# tiny matmuls on 2 shared cores run ~1000x slower with 2 threads fighting other processes
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(tok, arch: str, seed: int = 1, layers: int = 2):
    """A tiny random model with larger weights (varied greedy text) and two extra EOS ids that the
    greedy continuations hit at different steps, so rows stop at different times."""
    from tests.tiny import build_model

    model = build_model(tok, arch=arch, layers=layers)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def set_stop_tokens(model, tok, prompts, new: int = 16) -> None:
    """Add a token from the middle of two greedy continuations as an extra EOS id."""
    ref = [hf_greedy(model, tok, p, new) for p in prompts]
    extra = {ref[1][len(ref[1]) // 2], ref[2][len(ref[2]) // 3]}
    model.generation_config.eos_token_id = sorted({tok.eos_token_id, *extra})


def hf_greedy(model, tok, prompt: list[int], new: int) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id,
    )
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    ids = tiny_tokenizer.encode(TEXT)
    return [ids[:k] for k in LENGTHS]


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def stopping_model(request, tiny_tokenizer, prompts):
    model = make_model(tiny_tokenizer, request.param)
    set_stop_tokens(model, tiny_tokenizer, prompts)
    refs = [hf_greedy(model, tiny_tokenizer, p, 16) for p in prompts]
    return model, refs


@pytest.mark.parametrize(("max_batch", "chunk"), [(8, 8192), (3, 4), (1, 8192)])
def test_greedy_equals_hf_generate(stopping_model, tiny_tokenizer, prompts, max_batch, chunk):
    """8 rows (4 prompts x G=2) through 8, 3 (continuous batching) or 1 slot(s), chunked prefill too."""
    model, refs = stopping_model
    assert len({len(r) for r in refs}) > 1, "the reference should stop rows at different steps"
    engine = StaticEngine(model, tiny_tokenizer, max_batch=max_batch, max_len=40, prefill_chunk=chunk)
    out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=16, temperature=0))
    for ref, group in zip(refs, out, strict=True):
        assert [c.response_ids for c in group] == [ref, ref]
        for c in group:
            stopped = ref[-1] in model.generation_config.eos_token_id
            assert c.finish_reason == ("stop" if stopped else "length")
    if max_batch == 8:  # all 8 rows fit at once: one prefill per prompt, K/V copied to the sibling
        assert engine.stats["prefills"] == len(prompts)
        assert engine.stats["moves"] > 0  # early stops let the survivors move down to a smaller bucket


@pytest.mark.parametrize("share", [True, False])
def test_graph_warm_up_leaves_live_rows_intact(stopping_model, tiny_tokenizer, prompts, share):
    """Capturing a CUDA graph first runs the decode eagerly on dummy inputs; replayed here on the CPU
    before every new step shape (batch, spans), it must not change any output."""
    model, refs = stopping_model
    engine = StaticEngine(model, tiny_tokenizer, max_batch=4 if share else 3, max_len=40, share_prefix=share)
    seen = set()

    def decode_after_warm_up(shape, params, inputs):
        if shape not in seen:
            seen.add(shape)
            engine._warm_up(shape, params)
        return engine._decode_sample(shape, params, *inputs)

    engine._decode_step = decode_after_warm_up
    out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=16, temperature=0))
    assert [[c.response_ids for c in g] for g in out] == [[r, r] for r in refs]
    assert len(seen) >= 2


def teacher_forced_logprobs(model, prompt, response, params: SamplingParams) -> torch.Tensor:
    """log_softmax(filter(logits / T)) at the response tokens, filter written out independently."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / params.temperature
    out = []
    for row, token in zip(logits, response, strict=True):
        order = row.argsort(descending=True)
        keep = torch.zeros_like(row, dtype=torch.bool)
        keep[order[: params.top_k]] = True
        filtered = row.masked_fill(~keep, float("-inf"))
        probs = torch.softmax(filtered, -1)
        mass_before = 0.0
        for i in order.tolist():  # nucleus: keep while the mass ranked before stays below top_p
            if mass_before >= params.top_p:
                filtered[i] = float("-inf")
            mass_before += probs[i].item()
        out.append(torch.log_softmax(filtered, -1)[token])
    return torch.stack(out)


def test_sampled_logprobs_equal_teacher_forced(tiny_tokenizer, prompts):
    model = make_model(tiny_tokenizer, "qwen3")
    params = SamplingParams(max_new_tokens=10, temperature=0.8, top_k=40, top_p=0.9, seed=3)
    engine = StaticEngine(model, tiny_tokenizer, max_batch=4, max_len=32)
    for p, group in zip(prompts[:2], engine.generate(prompts[:2], 3, params), strict=True):
        for c in group:
            ref = teacher_forced_logprobs(model, p, c.response_ids, params)
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4)


def test_sampling_reproducible_whatever_the_batch(tiny_tokenizer, prompts):
    model = make_model(tiny_tokenizer, "llama")
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=7)

    def run(max_batch, seed=7):
        engine = StaticEngine(model, tiny_tokenizer, max_batch=max_batch, max_len=32)
        out = engine.generate(prompts, 3, SamplingParams(**{**params.__dict__, "seed": seed}))
        return [[c.response_ids for c in g] for g in out]

    a = run(8)
    assert a == run(2) == run(1)
    assert a != run(8, seed=8)
    assert len({tuple(r) for g in a for r in g}) > 4  # samples of one prompt differ


def test_load_weights_switches_policy(tiny_tokenizer, prompts):
    old, new = make_model(tiny_tokenizer, "qwen3", seed=1), make_model(tiny_tokenizer, "qwen3", seed=2)
    engine = StaticEngine(copy.deepcopy(old), tiny_tokenizer, max_batch=4, max_len=32)
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    before = [g[0].response_ids for g in engine.generate(prompts, 1, greedy)]
    engine.load_weights(new.state_dict())
    after = [g[0].response_ids for g in engine.generate(prompts, 1, greedy)]
    assert before == [hf_greedy(old, tiny_tokenizer, p, 8) for p in prompts]
    assert after == [hf_greedy(new, tiny_tokenizer, p, 8) for p in prompts]


def test_gumbel_sampler_matches_distribution():
    """Frequencies of 40k draws from a 4-token distribution within 4 sigma of p."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(40000, 1)
    keys = torch.tensor([row_key(0, 0, j) for j in range(40000)])
    token, logp = sample_rows(logits, SamplingParams(temperature=1.0), keys, torch.zeros(40000, dtype=torch.long))
    p = torch.softmax(logits[0], -1)
    freq = torch.bincount(token, minlength=4).float() / 40000
    assert (freq - p).abs().max() < 4 * (p * (1 - p) / 40000).sqrt().max()
    assert torch.allclose(logp, p.log()[token])
    u = uniform_noise(keys[:100], torch.arange(100), 1000)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01


def test_length_bucket_and_limits(tiny_tokenizer, prompts):
    assert length_bucket(1, 10_000) == 256 and length_bucket(257, 10_000) == 512
    assert length_bucket(5000, 10_000) == 5120 and length_bucket(33_000, 33_000) == 33_000
    engine = StaticEngine(make_model(tiny_tokenizer, "qwen3"), tiny_tokenizer, max_batch=2, max_len=16)
    with pytest.raises(ValueError, match="max_len"):
        engine.generate(prompts, 1, SamplingParams(max_new_tokens=8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_cuda_graphs_greedy_equals_hf_generate(tiny_tokenizer, prompts, arch):
    """The captured-graph decode (fp32 on the GPU) gives HF's greedy tokens, with slot refill."""
    model = make_model(tiny_tokenizer, arch)
    set_stop_tokens(model, tiny_tokenizer, prompts)
    refs = [hf_greedy(model, tiny_tokenizer, p, 16) for p in prompts]
    model.to("cuda")
    for max_batch in (8, 3):
        engine = StaticEngine(model, tiny_tokenizer, max_batch=max_batch, max_len=300)
        out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=16, temperature=0))
        assert engine.use_graphs and engine._graphs
        assert [[c.response_ids for c in g] for g in out] == [[r, r] for r in refs]
    again = engine.generate(prompts, 2, SamplingParams(max_new_tokens=16, temperature=0.9, seed=5))
    assert again == engine.generate(prompts, 2, SamplingParams(max_new_tokens=16, temperature=0.9, seed=5))
