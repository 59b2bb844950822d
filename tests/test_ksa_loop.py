"""A KSA policy through the whole GRPO loop: learner log-probs, KSA-cache rollouts, KV-budget
admission, and an inline `golong train` that checkpoints and resumes."""

from __future__ import annotations

import json

import pytest
import torch

from golong.config import AlgoConfig, ModelConfig, OptimConfig
from golong.rollout.base import SamplingParams

pytest.importorskip("ksa.modeling")

KSA = {"chunk": 4, "windows": [1, 1000]}  # layer 0: ring of 2 chunks + summaries; layer 1: full


def ksa_learner(model_dir, kl_coef=0.0, ksa=KSA):
    from golong.learner import Learner

    cfg = ModelConfig(path=str(model_dir), ksa=ksa)
    return Learner(cfg, OptimConfig(lr=1e-3, micro_batch_tokens=4096), AlgoConfig(kl_coef=kl_coef),
                   device="cpu")


def forward_logprobs(model, prompt: list[int], response: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log p(response | prompt) from one plain forward of the whole sequence (batch of one)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0].float() / temperature
    where = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
    return torch.log_softmax(logits, -1)[where, torch.tensor(response)]


def samples_of_mixed_lengths():
    from golong.learner import Sample

    g = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (9, 6), (14, 2), (3, 11)]  # prompt+response lengths 8, 15, 16, 14 cross chunk edges (C=4)
    return [Sample(prompt_ids=torch.randint(10, 400, (p,), generator=g).tolist(),
                   response_ids=torch.randint(10, 400, (r,), generator=g).tolist(), advantage=a)
            for (p, r), a in zip(shapes, [1.0, -1.0, 0.5, -0.5], strict=True)]


def test_learner_logprobs_of_a_ksa_policy_equal_its_own_forward(tiny_model_dir):
    from golong.packing import supports_packing

    learner = ksa_learner(tiny_model_dir, kl_coef=0.1)
    model = learner.model
    assert model.config.model_type == "ksa_qwen3" and not supports_packing(model)
    samples = samples_of_mixed_lengths()
    assert len(learner._rows(samples)) == 1  # all four share one micro-batch (one padded batch)
    got = learner.compute_logprobs(samples)
    for s, lp in zip(samples, got, strict=True):
        assert lp.shape == (len(s.response_ids),)  # text tokens only: no summary slot is scored
        torch.testing.assert_close(lp, forward_logprobs(model.eval(), s.prompt_ids, s.response_ids), atol=1e-5, rtol=0)
    # the KL reference is a frozen copy of the KSA policy, so at step 0 it agrees exactly (kl = 0)
    assert learner._ref is not None and learner._ref.config.model_type == "ksa_qwen3"
    m = learner.train_step(samples)
    assert abs(m["kl"]) < 1e-6 and torch.isfinite(torch.tensor(m["loss"]))
    after = learner.compute_logprobs(samples)
    assert any(not torch.allclose(a, b) for a, b in zip(got, after, strict=True))  # the policy moved
    ref = [forward_logprobs(learner._ref, s.prompt_ids, s.response_ids) for s in samples]
    assert all(torch.allclose(r, g, atol=1e-5) for r, g in zip(ref, got, strict=True))  # the reference did not


@pytest.fixture(scope="module")
def ksa_parts(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    import ksa

    full = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    model = ksa.convert_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32),
                              ksa.KSAConfig(chunk=4, windows=[1, 1])).eval()
    texts = ["the key is 4411 and", "record city name code year number find list order first last",
             "a", "secret needle in the haystack passage: 7 7 7 the answer is"]
    prompts = [tiny_tokenizer(t)["input_ids"] for t in texts]
    assert len({len(p) % 4 for p in prompts}) > 1  # prompts end at different places in their chunks
    return full, model, tiny_tokenizer, prompts


def test_loop_engine_samples_with_the_ksa_cache_and_reports_exact_logprobs(ksa_parts):
    from golong.rollout.loop import LoopEngine

    _, model, tok, prompts = ksa_parts
    engine = LoopEngine(model, tok, batch_size=12)
    out = engine.generate(prompts, 3, SamplingParams(max_new_tokens=10, temperature=0.7, seed=3))
    assert engine.stats["kv_bytes_peak"] > 0
    for p, group in zip(prompts, out, strict=True):
        assert len(group) == 3
        for c in group:
            assert c.prompt_ids == p and len(c.response_ids) == len(c.logprobs) > 0
            want = forward_logprobs(model, p, c.response_ids, temperature=0.7)
            torch.testing.assert_close(torch.tensor(c.logprobs), want, atol=1e-4, rtol=0)


def test_kv_accounting_by_hand():
    from types import SimpleNamespace

    from golong.rollout.kvmem import kv_bytes_per_sequence, layer_entries, plan_batches

    assert layer_entries(32768, window=128, chunk=8, summaries=1) == 129 * 8 + 4096
    assert layer_entries(32768, window=16768, chunk=8, summaries=1) == 32768  # window covers it: text only
    assert layer_entries(20, window=1, chunk=4, summaries=1) == 8 + 5
    assert layer_entries(100, sliding=32) == 32 and layer_entries(100) == 100
    qwen3_4b = dict(num_hidden_layers=36, num_key_value_heads=8, head_dim=128, num_attention_heads=32, hidden_size=2560)
    full = SimpleNamespace(**qwen3_4b)
    hybrid = SimpleNamespace(**qwen3_4b, ksa_chunk=8, ksa_summaries=1, ksa_windows=([128] * 3 + [16768]) * 9)
    per_entry = 2 * 8 * 128 * 2
    assert kv_bytes_per_sequence(full, 32768) == 36 * 32768 * per_entry  # 4.5 GiB
    assert kv_bytes_per_sequence(hybrid, 32768) == (27 * 5128 + 9 * 32768) * per_entry
    # a 40 GiB budget at 32K: 8 full-attention sequences, 24 KSA ones (groups of one)
    budget = 40 * 1024**3
    fits = lambda cfg: len(plan_batches([32768 - 256] * 64, 1, 256, cap=64, budget=budget,  # noqa: E731
                                        seq_bytes=lambda n: kv_bytes_per_sequence(cfg, n))[0])
    assert (fits(full), fits(hybrid)) == (8, 24)


def test_read_entries_by_hand():
    """What one decode step must read: a group's prompt once, each row's own part; a KSA ring layer
    only the prompt's last window (from chunk P//C - W) and summaries, and each row's ring and own
    summaries."""
    from types import SimpleNamespace

    from golong.rollout.kvmem import layer_entries, read_entries

    full = SimpleNamespace(num_hidden_layers=2, num_attention_heads=2)
    assert read_entries(full, 30, [40, 40]) == 2 * (30 + 10 + 10)
    assert read_entries(full, 0, [40, 40]) == 2 * 80
    hybrid = SimpleNamespace(num_hidden_layers=2, num_attention_heads=2, ksa_chunk=4, ksa_summaries=1,
                             ksa_windows=[2, 1 << 20])
    # ring layer (W*C = 8 < 40): prompt text 30 - (30//4 - 2)*4 = 10 and 7 summaries once; per row
    # 10 own tokens (ring 12) + 40//4 - 30//4 = 3 own summaries; the full layer: 30 + 10 + 10
    assert read_entries(hybrid, 30, [40, 40]) == (17 + 2 * 13) + 50
    assert read_entries(hybrid, 0, [40, 40]) == 2 * layer_entries(40, window=2, chunk=4, summaries=1) + 80
    assert read_entries(hybrid, 5, [7, 8]) == (5 + 2 + 3) * 2  # the window covers both rows: text only
    assert read_entries(hybrid, 0, []) == 0


def test_kv_budget_admits_more_ksa_rows_and_keeps_completions(ksa_parts):
    from golong.rollout.kvmem import model_kv_bytes_fn
    from golong.rollout.loop import LoopEngine

    full, model, tok, prompts = ksa_parts
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=7)
    n = 2
    longest = max(len(p) for p in prompts) + params.max_new_tokens
    budget_gb = 2 * n * model_kv_bytes_fn(full)(longest) / 1024**3  # two full-attention groups
    stats, outs = {}, {}
    for name, m in (("full", full), ("ksa", model)):
        engine = LoopEngine(m, tok, batch_size=64, kv_budget_gb=budget_gb)
        outs[name] = engine.generate(prompts, n, params)
        stats[name] = dict(engine.stats)
        assert stats[name]["kv_bytes_peak"] <= stats[name]["kv_bytes"] <= budget_gb * 1024**3  # the plan bounds the cache
        # the batching changes nothing: one big batch, or one prompt at a time, samples the same tokens
        for other in (LoopEngine(m, tok, batch_size=64), LoopEngine(m, tok, batch_size=n)):
            again = other.generate(prompts, n, params)
            assert [[c.response_ids for c in g] for g in again] == [[c.response_ids for c in g] for g in outs[name]]
            for ga, gb in zip(again, outs[name], strict=True):
                for a, b in zip(ga, gb, strict=True):
                    torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)
    assert stats["full"]["concurrency"] == 2 * n
    assert stats["ksa"]["concurrency"] > stats["full"]["concurrency"]


def test_inline_train_of_a_ksa_policy_checkpoints_and_resumes(tiny_model_dir, tmp_path):
    from golong.config import validate_recipe
    from golong.rewarding import RewardPool
    from golong.trainer import train

    def digit_share(row, response, **variant):
        return sum(ch.isdigit() for ch in response) / max(1, len(response))

    def recipe(out, steps):
        return validate_recipe({
            "model": {"path": str(tiny_model_dir), "ksa": KSA},
            "data": {"sources": [{"generate": ["precise_retrieval"], "length": 60, "n": 6}], "max_prompt_tokens": 100},
            "rollout": {"group_size": 2, "prompts_per_step": 2, "max_new_tokens": 6, "batch_size": 8,
                        "kv_budget_gb": 0.001},
            "algo": {"dynamic_sampling": False, "kl_coef": 0.05},
            "optim": {"lr": 1e-3},
            "cluster": {"mode": "inline"},
            "trainer": {"steps": steps, "output_dir": str(out), "save_every": 1},
        })

    def strip(history):
        return [{k: v for k, v in h.items() if not (k.endswith("_time") or k.endswith("_s") or k == "tokens_per_s")}
                for h in history]

    pool = lambda: RewardPool(mode="thread", score_fn=digit_share)  # noqa: E731
    straight = train(recipe(tmp_path / "a", 2), rewards=pool(), quiet=True)
    train(recipe(tmp_path / "b", 1), rewards=pool(), quiet=True)
    ckpt = tmp_path / "b" / "checkpoints" / "step_000001" / "learner" / "model" / "config.json"
    assert json.loads(ckpt.read_text())["model_type"] == "ksa_qwen3"
    resumed = train(recipe(tmp_path / "b", 2), resume=tmp_path / "b", rewards=pool(), quiet=True)
    assert strip(resumed) == strip(straight)
    for h in straight:
        assert h["rollout/concurrency"] >= 2 and h["rollout/kv_bytes"] > 0 and "kl" in h
    assert any(abs(h["loss"]) > 0 for h in straight)
