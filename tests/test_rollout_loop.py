"""The loop engine (a decode loop over the transformers model): log-probs, greedy equivalence, seeds, EOS,
weight loading."""

from __future__ import annotations

import math

import pytest
import torch

from golong.rollout import check_available
from golong.rollout.base import SamplingParams, encode_chat
from golong.rollout.loop import LoopEngine
from golong.rollout.sampling import noise_columns, row_key, sample_rows, uniform_noise


@pytest.fixture(scope="module")
def engine_parts(tiny_tokenizer):
    from tests.tiny import build_model

    model = build_model(tiny_tokenizer, seed=1)
    prompts = [encode_chat(tiny_tokenizer, [{"role": "user", "content": c}])
               for c in ("find the secret key value", "the city name is", "a")]
    return model, tiny_tokenizer, prompts


def full_forward_logprobs(model, prompt, response, temperature=1.0):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0].float() / temperature
    lp = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
    return lp.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def test_logprobs_match_a_full_forward_at_the_sampling_temperature(engine_parts):
    model, tok, prompts = engine_parts
    eng = LoopEngine(model, tok, batch_size=8)
    out = eng.generate(prompts, 3, SamplingParams(max_new_tokens=12, temperature=0.7, seed=3))
    assert [len(g) for g in out] == [3, 3, 3]
    for p, group in zip(prompts, out, strict=True):
        for c in group:
            assert c.prompt_ids == p and len(c.response_ids) == len(c.logprobs) == 12
            ref = full_forward_logprobs(model, p, c.response_ids, temperature=0.7)
            assert torch.allclose(ref, torch.tensor(c.logprobs), atol=1e-4)


def test_greedy_equals_transformers_generate_and_seeds_reproduce(engine_parts):
    model, tok, prompts = engine_parts
    eng = LoopEngine(model, tok, batch_size=2)  # several batches, left padding within each
    greedy = eng.generate(prompts, 1, SamplingParams(max_new_tokens=10, temperature=0))
    for p, group in zip(prompts, greedy, strict=True):
        ref = model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False)[0, len(p):].tolist()
        assert group[0].response_ids == ref
    a = eng.generate(prompts, 2, SamplingParams(max_new_tokens=8, seed=11))
    b = eng.generate(prompts, 2, SamplingParams(max_new_tokens=8, seed=11))
    c = eng.generate(prompts, 2, SamplingParams(max_new_tokens=8, seed=12))
    ids = lambda out: [[x.response_ids for x in g] for g in out]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_generation_stops_at_eos_and_reports_the_finish_reason(tiny_tokenizer):
    from tests.tiny import build_model

    model = build_model(tiny_tokenizer, seed=2)
    # An eighth of the vocabulary ends a response: some samples stop within 6 tokens, some do not.
    stop_ids = list(range(len(tiny_tokenizer) * 7 // 8, len(tiny_tokenizer)))
    model.generation_config.eos_token_id = stop_ids
    eng = LoopEngine(model, tiny_tokenizer, batch_size=16)
    prompt = encode_chat(tiny_tokenizer, [{"role": "user", "content": "answer question"}])
    out = eng.generate([prompt], 16, SamplingParams(max_new_tokens=6, temperature=1.0, seed=0))[0]
    stop = set(stop_ids)
    assert {c.finish_reason for c in out} == {"stop", "length"}
    for c in out:
        if c.finish_reason == "stop":
            assert c.response_ids[-1] in stop and not stop & set(c.response_ids[:-1])
            assert c.text == tiny_tokenizer.decode(c.response_ids[:-1])
        else:
            assert len(c.response_ids) == 6 and not stop & set(c.response_ids)


def test_load_weights_replaces_the_policy(engine_parts, tiny_tokenizer):
    from tests.tiny import build_model

    model, tok, prompts = engine_parts
    other = build_model(tiny_tokenizer, seed=5)
    eng = LoopEngine(build_model(tiny_tokenizer, seed=1), tok)
    params = SamplingParams(max_new_tokens=6, seed=4)
    before = eng.generate(prompts, 1, params)
    eng.load_weights(other.state_dict())
    after = eng.generate(prompts, 1, params)
    expected = LoopEngine(other, tok).generate(prompts, 1, params)
    assert [g[0].response_ids for g in after] == [g[0].response_ids for g in expected]
    assert [g[0].logprobs for g in after] == [g[0].logprobs for g in expected]
    assert [g[0].logprobs for g in after] != [g[0].logprobs for g in before]
    with pytest.raises(KeyError, match="not in the engine"):
        eng.load_weights({"no.such.weight": torch.zeros(1)})


def test_sample_filters_top_k_and_top_p_and_returns_filtered_logprobs():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    key = torch.tensor([row_key(0, 0, 0)], dtype=torch.int64)

    def draw(params, step=0):
        return sample_rows(logits, params, key, torch.tensor([step], dtype=torch.int64))

    # top_p=0.7: mass before token 2 is 0.8 >= 0.7, so only tokens 0 and 1 survive (p = 0.625, 0.375).
    seen = set()
    for step in range(200):
        tok, lp = draw(SamplingParams(top_p=0.7), step)
        seen.add(int(tok))
        assert math.isclose(float(lp), math.log([0.625, 0.375][int(tok)]), rel_tol=1e-5)
    assert seen == {0, 1}
    tok, lp = draw(SamplingParams(top_k=1))
    assert int(tok) == 0 and abs(float(lp)) < 1e-6
    tok, lp = draw(SamplingParams(temperature=0))
    assert int(tok) == 0 and math.isclose(float(lp), math.log(0.5), rel_tol=1e-5)


def test_noise_from_kept_columns_equals_the_computed_stream():
    """The compiled sampler's input noise_columns gives the same numbers, hence the same draws."""
    keys = torch.tensor([row_key(3, p, j) for p in range(3) for j in range(2)], dtype=torch.int64)
    steps = torch.arange(6, dtype=torch.int64) * 7
    vocab = 1000
    assert torch.equal(uniform_noise(keys, steps, vocab, noise_columns(vocab)), uniform_noise(keys, steps, vocab))
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=0.8, top_p=0.9)
    for a, b in zip(sample_rows(logits, params, keys, steps), sample_rows(logits, params, keys, steps, noise_columns(vocab)),
                    strict=True):
        assert torch.equal(a, b)


def test_vllm_engine_is_a_clear_error_until_it_exists():
    from golong.config import RecipeError

    with pytest.raises(RecipeError, match="vllm"):
        check_available("vllm")
