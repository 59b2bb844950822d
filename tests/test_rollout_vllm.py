"""VLLMEngine against transformers on the tiny Qwen3 model: sampler log-probs, seeds, skipped
prompts, and weight sync (greedy output after `load_weights` equals transformers' greedy output of
the new weights). One engine per module: vLLM takes 20-50 s to start on CPU.

Run in the vLLM venv: `.venv-vllm/bin/pytest -m vllm tests/test_rollout_vllm.py`.
"""

from __future__ import annotations

import copy

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="vllm is not installed (CPU: scripts/setup_vllm_cpu.sh, then .venv-vllm/bin/pytest -m vllm)")

import torch  # noqa: E402

from golong.rollout.base import SamplingParams  # noqa: E402
from golong.rollout.vllm import VLLMEngine, prompt_seed  # noqa: E402

MAX_LEN = 96
PROMPTS = [[5, 6, 7, 8, 9, 10], [40, 41, 42], [100, 7, 200, 9, 300, 11, 12, 13]]


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tiny_tokenizer):
    return VLLMEngine(tiny_model_dir, tiny_tokenizer, max_model_len=MAX_LEN, dtype="float32")


def scaled_model(tokenizer, seed: int, scale: float = 20.0):
    """A random tiny model with large weights: its greedy output depends strongly on its weights."""
    from tests.tiny import build_model

    model = build_model(tokenizer, seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.eval()


@torch.no_grad()
def reference_logprobs(model, prompt: list[int], response: list[int], temperature: float, top_k: int = 0) -> torch.Tensor:
    """log p(token) under log_softmax(top_k(logits / T)) by teacher forcing (T = 0 -> T = 1)."""
    ids = torch.tensor([prompt + response])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / (temperature or 1.0)
    if top_k:
        kth = logits.topk(top_k, -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


@torch.no_grad()
def hf_greedy(model, prompt: list[int], steps: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt) :].tolist()


def test_groups_shape_and_sampler_logprobs(engine, hf_model):
    params = SamplingParams(max_new_tokens=12, temperature=0.7, top_k=50, seed=3)
    out = engine.generate(PROMPTS, 4, params)
    assert [len(g) for g in out] == [4, 4, 4]
    for i, group in enumerate(out):
        assert len({tuple(c.response_ids) for c in group}) > 1  # G samples, not G copies
        for c in group:
            assert c.prompt_index == i and c.prompt_ids == PROMPTS[i]
            assert len(c.logprobs) == len(c.response_ids) and 1 <= len(c.response_ids) <= 12
            assert c.finish_reason == ("stop" if c.response_ids[-1] in engine.eos_ids else "length")
            ref = reference_logprobs(hf_model, c.prompt_ids, c.response_ids, 0.7, top_k=50)
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=2e-4, rtol=0)


def test_greedy_matches_transformers(engine, hf_model):
    out = engine.generate(PROMPTS, 1, SamplingParams(max_new_tokens=10, temperature=0.0))
    for prompt, (c,) in zip(PROMPTS, out, strict=True):
        assert c.response_ids == hf_greedy(hf_model, prompt, 10)[: len(c.response_ids)]
        ref = reference_logprobs(hf_model, prompt, c.response_ids, 0.0)  # greedy reports T = 1 log-probs
        torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=2e-4, rtol=0)


def test_seed_fixes_the_samples(engine):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=11)
    a = engine.generate(PROMPTS, 3, params)
    b = engine.generate(PROMPTS, 3, params)
    c = engine.generate(PROMPTS, 3, SamplingParams(max_new_tokens=8, temperature=1.0, seed=12))
    ids = lambda out: [[x.response_ids for x in g] for g in out]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    # two identical prompts in one call still draw different samples (distinct per-prompt seeds)
    same = engine.generate([PROMPTS[0], PROMPTS[0]], 2, params)
    assert ids(same)[0] != ids(same)[1]
    assert prompt_seed(5, 1, 4) == 9 and prompt_seed(5, 0, 4) == 5


def test_too_long_prompts_are_skipped_and_counted(engine, caplog):
    long_prompt = list(range(3, 3 + MAX_LEN - 5))  # fits the context, but not with 8 new tokens
    before = engine.skipped_prompts
    out = engine.generate([PROMPTS[0], long_prompt], 2, SamplingParams(max_new_tokens=8, seed=1))
    assert len(out[0]) == 2 and all(c.response_ids for c in out[0])
    assert len(out[1]) == 2
    for c in out[1]:
        assert c.response_ids == [] and c.logprobs == [] and c.text == "" and c.finish_reason == "length"
        assert c.meta == {"skipped": "prompt_too_long", "prompt_tokens": len(long_prompt), "max_model_len": MAX_LEN}
    assert engine.skipped_prompts == before + 1
    # only-skipped calls never reach vLLM and do not crash
    assert engine.generate([long_prompt], 3, SamplingParams(max_new_tokens=8))[0][0].meta["skipped"]


def test_load_weights_changes_generation(engine, tiny_tokenizer, hf_model):
    """Greedy output and log-probs follow every sync: to model A, to model B, back to the original."""
    try:
        for seed in (101, 202):
            new = scaled_model(tiny_tokenizer, seed)
            engine.load_weights(copy.deepcopy(new.state_dict()))
            out = engine.generate(PROMPTS, 1, SamplingParams(max_new_tokens=10, temperature=0.0))
            for prompt, (c,) in zip(PROMPTS, out, strict=True):
                assert c.response_ids == hf_greedy(new, prompt, 10)[: len(c.response_ids)]
                ref = reference_logprobs(new, prompt, c.response_ids, 0.0)
                torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-3, rtol=1e-4)
        # the weights really changed: the last model's greedy output differs from the original's
        assert any(hf_greedy(new, p, 10) != hf_greedy(hf_model, p, 10) for p in PROMPTS)
    finally:
        engine.load_weights(hf_model.state_dict())
    out = engine.generate(PROMPTS, 1, SamplingParams(max_new_tokens=10, temperature=0.0))
    for prompt, (c,) in zip(PROMPTS, out, strict=True):
        assert c.response_ids == hf_greedy(hf_model, prompt, 10)[: len(c.response_ids)]
    assert engine.sync_method == "reload"  # vLLM's layerwise in-place reload works on the CPU backend
    assert len(engine.sync_times) >= 3


def test_sync_without_tied_lm_head_key(engine, tiny_tokenizer, hf_model):
    """A state dict without the tied `lm_head.weight` (as saved files have) still syncs fully."""
    new = scaled_model(tiny_tokenizer, 303)
    state = {k: v.clone() for k, v in new.state_dict().items() if k != "lm_head.weight"}
    try:
        engine.load_weights(state)
        (c,) = engine.generate([PROMPTS[0]], 1, SamplingParams(max_new_tokens=10, temperature=0.0))[0]
        assert c.response_ids == hf_greedy(new, PROMPTS[0], 10)[: len(c.response_ids)]
    finally:
        engine.load_weights(hf_model.state_dict())


def test_sleep_and_wake_are_safe_on_cpu(engine):
    engine.sleep()
    engine.wake()
    out = engine.generate([PROMPTS[1]], 2, SamplingParams(max_new_tokens=4, seed=0))
    assert len(out[0]) == 2 and all(c.response_ids for c in out[0])
