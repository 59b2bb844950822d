"""Batched prefills in golong's engine: the prompts admitted together go through the layers as one
packed row; greedy tokens, sampler log-probs and the K/V written equal prefilling one prompt at a time
and transformers' generate, in float32."""

from __future__ import annotations

import pytest
import torch

from golong.rollout.base import SamplingParams
from golong.rollout.static import StaticEngine
from tests.test_rollout_static import TEXT, hf_greedy, make_model

LENGTHS = (3, 9, 5, 12, 7)


# tiny matmuls on 2 shared cores run ~1000x slower with 2 threads fighting other processes
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _engines(model, tok):
    """(batched, one at a time): a prefill_chunk below every prompt sends each prompt alone through
    the chunked single-prompt path."""
    return (StaticEngine(model, tok, max_batch=16, max_len=48),
            StaticEngine(model, tok, max_batch=16, max_len=48, prefill_chunk=min(LENGTHS) - 1))


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_batched_prefill_equals_one_at_a_time_and_generate(tiny_tokenizer, arch):
    model = make_model(tiny_tokenizer, arch)
    ids = tiny_tokenizer.encode(TEXT * 2)
    prompts = [ids[:k] for k in LENGTHS]
    batched, single = _engines(model, tiny_tokenizer)
    greedy = SamplingParams(max_new_tokens=10, temperature=0)
    out_b, out_s = batched.generate(prompts, 2, greedy), single.generate(prompts, 2, greedy)
    assert batched.stats["prefills"] == single.stats["prefills"] == len(prompts)
    assert batched.stats["prefill_batches"] == 1 and single.stats["prefill_batches"] == len(prompts)
    assert (batched.stats["prefill_max_prompts"], single.stats["prefill_max_prompts"]) == (len(prompts), 1)
    assert batched.stats["prefill_tokens"] == single.stats["prefill_tokens"] == sum(LENGTHS)
    for p, gb, gs in zip(prompts, out_b, out_s, strict=True):
        ref = hf_greedy(model, tiny_tokenizer, p, 10)
        for cb, cs in zip(gb, gs, strict=True):
            assert cb.response_ids == cs.response_ids == ref
            torch.testing.assert_close(torch.tensor(cb.logprobs), torch.tensor(cs.logprobs), atol=1e-5, rtol=0)
    for kb, ks in zip(batched.k_cache + batched.v_cache, single.k_cache + single.v_cache, strict=True):
        torch.testing.assert_close(kb, ks, atol=1e-5, rtol=1e-5)  # the same K/V in the same slots


def test_batched_prefill_sampling_equals_one_at_a_time(tiny_tokenizer):
    """Sampled rows: the same tokens (the sampler's stream is keyed by prompt, sample and step) and
    the same log-probs, with prompts packed into several forwards by the token budget."""
    model = make_model(tiny_tokenizer, "qwen3")
    ids = tiny_tokenizer.encode(TEXT * 2)
    prompts = [ids[:k] for k in LENGTHS]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=5)
    packed = StaticEngine(model, tiny_tokenizer, max_batch=16, max_len=48, prefill_chunk=16)  # 3+9 | 5 | 12 | 7
    single = _engines(model, tiny_tokenizer)[1]
    out_p, out_s = packed.generate(prompts, 3, params), single.generate(prompts, 3, params)
    assert 1 < packed.stats["prefill_batches"] < len(prompts)
    for gp, gs in zip(out_p, out_s, strict=True):
        for cp, cs in zip(gp, gs, strict=True):
            assert cp.response_ids == cs.response_ids
            torch.testing.assert_close(torch.tensor(cp.logprobs), torch.tensor(cs.logprobs), atol=1e-5, rtol=0)


def test_prefill_attention_sees_the_bshd_layout(tiny_tokenizer, monkeypatch):
    """The prefills' causal SDPA calls (packed prompts, a chunked prompt's first chunk) get q, k and v laid
    out [B, S, H, D] in memory, as cuDNN's length-bucketed plans need (TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1)."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, *args, is_causal=False, **kwargs):
        if is_causal:
            seen.extend(t.transpose(1, 2).is_contiguous() for t in (q, k, v))
        return sdpa(q, k, v, *args, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    model = make_model(tiny_tokenizer, "qwen3")
    assert model.config.num_attention_heads != model.config.num_key_value_heads
    prompts = [tiny_tokenizer.encode(TEXT * 2)[:k] for k in LENGTHS]
    for engine in _engines(model, tiny_tokenizer):
        engine.generate(prompts, 1, SamplingParams(max_new_tokens=2, temperature=0))
    assert len(seen) >= 3 * 2 * len(LENGTHS) and all(seen)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_later_prefill_chunks_attend_without_a_mask():
    """A later prefill chunk's attention through flash's causal mask aligned to the last key (bf16, 16
    heads of 128) against SDPA under the dense mask in float32, within bf16's error (compared with SDPA's
    own bf16 error under that mask)."""
    from golong.rollout.static import causal_to_last_key

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 16, n, 128, generator=g).cuda() for n in (300, 1000, 1000))
    mask = torch.ones(300, 1000, dtype=torch.bool, device="cuda").tril(700)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    dense = torch.nn.functional.scaled_dot_product_attention(*(t.bfloat16() for t in (q, k, v)), attn_mask=mask)
    fast = causal_to_last_key(*(t.bfloat16() for t in (q, k, v)), 128**-0.5)
    bf16_error = (dense.float() - ref).norm() / ref.norm()
    assert (fast.float() - ref).norm() / ref.norm() <= 2 * bf16_error + 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_chunked_prefill_equals_one_chunk_in_bf16(tiny_tokenizer):
    """A prompt prefilled in three chunks (later ones through causal_to_last_key) writes the K/V and gives
    the first tokens that one chunk does, bf16 on CUDA, within bf16's rounding."""
    model = make_model(tiny_tokenizer, "qwen3").to("cuda", torch.bfloat16)
    prompt = tiny_tokenizer.encode(TEXT * 4)[:40]
    engines = [StaticEngine(model, tiny_tokenizer, max_batch=2, max_len=64, prefill_chunk=chunk) for chunk in (64, 16)]
    outs = [e.generate([prompt], 1, SamplingParams(max_new_tokens=4, temperature=0)) for e in engines]
    assert outs[0][0][0].response_ids[:2] == outs[1][0][0].response_ids[:2]
    stored = [e.prompt_k + e.prompt_v for e in engines]
    assert stored[0] and len(stored[0]) == len(stored[1])
    for a, b in zip(*stored, strict=True):  # [row, kv heads, length, head dim]: the prompt's 40 positions
        torch.testing.assert_close(a[:1, :, :40].float(), b[:1, :, :40].float(), atol=3e-2, rtol=3e-2)
