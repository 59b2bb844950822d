"""bench/ksa_replication.py and bench/ksa_grpo.py: the synthetic tasks, the teacher-forced scoring, and
both scripts' --smoke runs on CPU (tiny models, reference KSA kernel)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import ksa_replication as rep  # noqa: E402


def _after(body: list[int], first: int) -> list[int]:
    """Tokens that follow `<sep> first` in the body."""
    return [body[i + 2] for i in range(len(body) - 2) if body[i] == rep.SEP and body[i + 1] == first]


@pytest.mark.parametrize("length", [256, 2048])
def test_make_batch_answers_follow_from_the_body(length):
    batch = rep.make_batch(np.random.default_rng(7), 4, length)
    assert batch.ids.shape == (4, length)
    assert [t for t, _ in batch.answers] == ["needle"] + ["kv"] * 8 + ["hop2"] * 4 + ["count"] * 4
    start = length - batch.query_tokens
    for row in batch.ids.tolist():
        assert row[0] == rep.BOS
        body = row[1:start]
        for task, where in batch.answers:
            key = row[where[0] - 1]
            answer = [row[p] for p in where]
            assert row[where[-1] + 1] == rep.EOS
            if task == "needle":
                assert key == rep.Q_NDL
                assert [t for t in body if rep.NEEDLE0 <= t < rep.NEEDLE0 + rep.N_NEEDLES] == answer
            elif task == "kv":
                assert _after(body, key) == answer
            elif task == "hop2":
                mid = _after(body, key)
                assert mid == answer[:1] and _after(body, mid[0]) == answer[1:]
            else:  # count: occurrences of the marker in the body
                assert answer == [rep.COUNT0 + body.count(key)]
                assert 1 <= body.count(key) <= 8


def test_easier_draws_have_fewer_pairs():
    batch = rep.make_batch(np.random.default_rng(0), 2, 512, max_pairs=2)
    assert [t for t, _ in batch.answers].count("kv") == 2
    pairs, chains, _ = rep.item_counts(batch.start - 1, {"kv": 2, "hop2": 4}, max_pairs=2)
    assert pairs == 2
    for r in batch.ids[:, : batch.start].tolist():  # `<sep> key value`: the kv pairs and each chain's second link
        assert sum(1 for i in range(len(r) - 2) if r[i] == rep.SEP and rep.VAL0 <= r[i + 2] < rep.VAL0 + rep.N_VALS) == 2 + chains


def test_make_batch_is_deterministic_and_draws_differ():
    a = rep.make_batch(np.random.default_rng([0, 3]), 2, 512).ids
    b = rep.make_batch(np.random.default_rng([0, 3]), 2, 512).ids
    c = rep.make_batch(np.random.default_rng([rep.EVAL_SEED, 512]), 2, 512).ids
    assert (a == b).all() and (a != c).any()


def test_prompt_and_answer_cut_before_the_answer():
    prompts, answers = rep.prompt_and_answer(np.random.default_rng(1), 3, 300, "hop2")
    assert prompts.shape == (3, 300 - 3) and answers.shape == (3, 2)
    assert (prompts[:, -2] == rep.Q_HOP).all()


def test_too_short_length_is_a_clear_error():
    with pytest.raises(ValueError, match="too short"):
        rep.make_batch(np.random.default_rng(0), 1, 100)


class _Oracle(torch.nn.Module):
    """Logits that put all mass on the true next token (or on <pad>, if `wrong`)."""

    def __init__(self, wrong: bool = False):
        super().__init__()
        self.wrong = wrong
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, logits_to_keep, use_cache=False):
        nxt = torch.cat([input_ids[:, 1:], input_ids[:, :1]], 1)[:, -logits_to_keep:]
        if self.wrong:
            nxt = torch.zeros_like(nxt)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, rep.VOCAB).float() * 50 + self.w)


def test_teacher_forced_scoring_is_aligned():
    plan = rep.Plan("smoke", [(256, rep.MAX_PAIRS, 1.0)], 1, 512, [256, 512], 6, 1024)
    assert all(a == 1.0 for accs in rep.evaluate(_Oracle(), plan, "cpu").values() for a in accs.values())
    assert all(a == 0.0 for accs in rep.evaluate(_Oracle(wrong=True), plan, "cpu").values() for a in accs.values())
    batch = rep.make_batch(np.random.default_rng(0), 2, 256)
    assert rep.batch_loss(_Oracle(), batch, "cpu").item() < 1e-6
    assert rep.batch_loss(_Oracle(wrong=True), batch, "cpu").item() > 10


def test_tokenizer_ids_are_the_synthetic_ids():
    tok = rep.build_tokenizer()
    assert (tok.eos_token_id, tok.pad_token_id, len(tok)) == (rep.EOS, rep.PAD, rep.VOCAB)
    assert tok.decode([rep.Q_KV, rep.KEY0 + 3, rep.VAL0 + 5, rep.EOS]) == "<q_kv> k3 v5 <eos>"
    assert tok("k3 v5", add_special_tokens=False)["input_ids"] == [rep.KEY0 + 3, rep.VAL0 + 5]


@pytest.fixture(scope="module")
def replication(tmp_path_factory):
    root = tmp_path_factory.mktemp("ksa-rep")
    result = rep.main(["--smoke", "--device", "cpu", "--out", str(root / "out"), "--save-models", str(root / "models")])
    return root, result


@pytest.mark.slow
def test_replication_smoke(replication):
    root, result = replication
    saved = json.loads((root / "out" / "results.json").read_text())
    assert set(saved["variants"]) == {"full", "ksa", "sca"}
    for row in saved["variants"].values():
        assert set(row["accuracy"]) == {"256", "512"}
        for accs in row["accuracy"].values():
            assert set(accs) == {"needle", "kv", "hop2", "count", "all"}
            assert all(0.0 <= a <= 1.0 for a in accs.values())
        assert len(row["loss"]) >= 2
    loss = saved["variants"]["full"]["loss"]
    assert loss[-1][1] < loss[0][1] - 1.0  # the answer-token loss falls (from ~ln 512)
    assert saved["variants"]["full"]["model_type"] == "qwen3"
    assert saved["variants"]["ksa"]["model_type"] == saved["variants"]["sca"]["model_type"] == "ksa_qwen3"
    assert (saved["variants"]["ksa"]["summaries_visible"], saved["variants"]["sca"]["summaries_visible"]) == (True, False)
    configs = {v: json.loads((root / "models" / v / "config.json").read_text()) for v in ("full", "ksa", "sca")}
    assert configs["full"]["model_type"] == "qwen3" and "ksa_windows" not in configs["full"]
    assert configs["ksa"]["ksa_windows"][:4] == [2, 2, 2, configs["ksa"]["ksa_windows"][3]] and configs["ksa"]["ksa_windows"][3] > 1000
    assert configs["sca"]["ksa_summaries_visible"] is False


@pytest.mark.slow
def test_grpo_smoke_on_the_saved_policies(replication, tmp_path):
    import ksa_grpo

    root, _ = replication
    result = ksa_grpo.main(["--smoke", "--device", "cpu", "--models", str(root / "models"), "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["policies"]) == {"full", "ksa"}
    assert saved["policies"]["full"]["model_type"] == "qwen3" and saved["policies"]["ksa"]["model_type"] == "ksa_qwen3"
    for row in saved["policies"].values():
        assert len(row["steps"]) == 3
        for s in row["steps"]:
            assert set(s["reward"]) == {"needle", "kv", "hop2", "count"}
            assert all(0.0 <= r <= 1.0 for r in s["reward"].values())
            assert s["groups_kept"] == s["groups"] == 8  # smoke: no dynamic sampling, every group trains
            assert s["train_s"] > 0 and "loss" in s and s["step_s"] >= s["gen_s"] + s["train_s"] - 1e-6
        assert set(row["acc_before"]) == {"needle", "kv", "hop2", "count", "all"}
    assert result["config"]["group"] == 4


def test_exact_match_reward():
    import ksa_grpo

    assert ksa_grpo.exact_match([5, 7, rep.EOS], [5, 7]) == 1.0
    assert ksa_grpo.exact_match([5, 7], [5, 7]) == 1.0
    assert ksa_grpo.exact_match([5, rep.EOS], [5, 7]) == 0.0
    assert ksa_grpo.exact_match([], [5]) == 0.0
