"""bench/ksa_replication.py, ksa_grpo.py, ksa_conversion.py and ksa_report.py: the synthetic tasks, the
teacher-forced scoring, the curriculum's gate, the incremental results, and the scripts' --smoke runs
on CPU (tiny models, reference KSA kernel)."""

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


def test_training_rows_ask_pairs_with_replacement():
    """Training rows draw kv queries with replacement: with as many queries as pairs drawn without,
    the last query's answer is the one value not yet asked for (elimination, no lookup needed)."""
    plan = rep.Plan("smoke", [(64, 2, 1.0, ("kv",))], 10, 64 * 200, [64], 1, 64)
    batch = rep.train_batch(plan, 0, 64, 2)
    asked = [[row[where[0] - 1] for task, where in batch.answers if task == "kv"] for row in batch.ids.tolist()]
    assert all(len(a) == 2 for a in asked)
    assert 0.3 < sum(a[0] == a[1] for a in asked) / len(asked) < 0.7  # the same pair twice in ~half the rows
    body = [row[1 : batch.start] for row in batch.ids.tolist()]
    for row, b in zip(batch.ids.tolist(), body, strict=True):
        for _, where in batch.answers:
            assert _after(b, row[where[0] - 1]) == [row[p] for p in where]


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


def test_train_batch_hits_match_evaluate():
    """The train-batch accuracy read inside batch_loss equals evaluate()'s scoring of the same rows."""
    batch = rep.make_batch(np.random.default_rng(3), 4, 256)
    for model, expect in ((_Oracle(), 1.0), (_Oracle(wrong=True), 0.0)):
        hits: dict = {}
        rep.batch_loss(model, batch, "cpu", hits)
        assert set(hits) == set(rep.TASKS)
        assert [len(hits[t]) for t in rep.TASKS] == [1, 8, 4, 4]  # one [B] tensor per query
        assert all(float(torch.cat(v).float().mean()) == expect for v in hits.values())


class _HalfRight(_Oracle):
    """Right on the second answer token only: hop2 (two tokens) is never fully right."""

    def forward(self, input_ids, logits_to_keep, use_cache=False):
        out = super().forward(input_ids, logits_to_keep)
        first_hop = (input_ids[:, -logits_to_keep:] == rep.Q_HOP).roll(1, 1)  # logits predicting the 1st hop2 token
        out.logits[first_hop] = out.logits[first_hop].roll(1, -1)
        return out


def test_hits_need_every_answer_token():
    batch = rep.make_batch(np.random.default_rng(4), 3, 256)
    hits: dict = {}
    rep.batch_loss(_HalfRight(), batch, "cpu", hits)
    assert float(torch.cat(hits["hop2"]).float().mean()) == 0.0
    assert float(torch.cat(hits["kv"]).float().mean()) == 1.0


def test_queries_scale_down_on_short_rows():
    assert rep.queries_for(256) == rep.queries_for(8192) == rep.TRAIN_QUERIES
    assert rep.queries_for(64) == {"needle": 1, "kv": 2, "hop2": 1, "count": 1}
    for stages in (rep.GPU_STAGES, rep.PILOT_STAGES):  # every stage can be drawn, with its tasks only
        plan = rep.Plan("smoke", stages, 10, 1024, [256], 1, 1024)
        for i, (length, pairs, *_) in enumerate(stages):
            batch = rep.train_batch(plan, 0, length, pairs, i)
            assert batch.ids.shape == (max(1, 1024 // length), length)
            asked = [t for t, _ in batch.answers]
            assert set(asked) == set(rep.stage_tasks(stages[i]))
            assert {t: asked.count(t) for t in set(asked)} == rep.stage_queries(stages[i])
    assert rep.stage_tasks((64, 2, 0.5)) == rep.TASKS and rep.stage_tasks(rep.GPU_STAGES[0]) == ("kv",)
    assert rep.stage_queries((128, 4, 0.5, ("kv", "needle"))) == {"kv": 4, "needle": 1}
    assert rep.stage_queries((128, 4, 0.5, {"kv": 16})) == {"kv": 16}


def test_recall_rows_are_pairs_then_queries():
    """recall_batch: noise up to a multiple of 4, `<sep> k v` pairs with distinct keys, then
    `<q_kv> k v <eos>` queries whose value is the one paired with k; answers and <eos> where stated."""
    batch = rep.recall_batch(np.random.default_rng(5), 16, 64, 4)
    assert batch.ids.shape == (16, 64) and len(batch.answers) == 12 == rep.stage_queries((64, 4, 1, rep.RECALL))["kv"]
    for row in batch.ids.tolist():
        body = row[1 : batch.start]
        triples = body[len(body) - 12 :]
        assert all(rep.NOISE0 <= t < rep.NOISE0 + rep.N_NOISE for t in body[: len(body) - 12])
        assert triples[0::3] == [rep.SEP] * 4 and len(set(triples[1::3])) == 4
        pairs = dict(zip(triples[1::3], triples[2::3], strict=True))
        for (task, (at,)), eos in zip(batch.answers, batch.eos, strict=True):
            assert task == "kv" and row[at - 2] == rep.Q_KV and row[eos] == rep.EOS and eos == at + 1
            assert row[at] == pairs[row[at - 1]]
    with pytest.raises(ValueError, match="no room"):
        rep.recall_batch(np.random.default_rng(0), 1, 16, 4)


def test_full_model_init_has_large_untied_embeddings():
    model = rep.build_full("smoke", seed=0)
    emb, head = model.get_input_embeddings().weight.detach(), model.get_output_embeddings().weight.detach()
    assert emb.data_ptr() != head.data_ptr()
    assert abs(float(emb.std()) - rep.EMB_STD) < 0.05 and abs(float(head.std()) - rep.INIT_STD) < 0.01
    again = rep.build_full("smoke", seed=0)
    assert torch.equal(again.get_input_embeddings().weight, emb)


def _plan(**kw) -> rep.Plan:
    return rep.Plan("smoke", [(64, 2, 0.5), (128, 4, 0.25), (256, 8, 0.25)], 100, 1024, [256], 1, 1024, **kw)


def test_curriculum_follows_the_schedule_without_mastery():
    cur = rep.Curriculum(_plan(), "full")
    seen = [cur.at(step, step / 100, 0.0) for step in range(100)]
    for step in range(0, 100, 5):
        cur.observe({"kv": 0.5, "hop2": 0.5}, step, 0.0)
    assert seen[0] == (64, 2) and seen[49] == (64, 2) and seen[50] == (128, 4) and seen[75] == (256, 8)
    assert [e["why"] for e in cur.events] == ["start", "schedule", "schedule"]


def test_curriculum_advances_once_mastered_and_never_falls_behind():
    cur = rep.Curriculum(_plan(gate_logs=3), "full")
    assert cur.at(0, 0.0, 0.0) == (64, 2)
    for i, acc in enumerate((0.95, 0.95, 0.5, 0.95, 0.95)):  # a miss resets the streak
        cur.observe({"kv": acc, "hop2": 0.99, "needle": 0.0}, i * 5, 0.0)
    assert cur.at(25, 0.25, 0.0) == (64, 2)
    cur.observe({"kv": 0.95, "hop2": 0.91}, 25, 0.0)  # third in a row: stage 2 from the next step
    assert cur.at(26, 0.26, 0.0) == (128, 4) and cur.events[-1]["why"] == "mastered"
    assert cur.at(80, 0.80, 0.0) == (256, 8) and cur.events[-1]["why"] == "schedule"
    for i in range(5):  # the last stage stays
        cur.observe({"kv": 1.0, "hop2": 1.0}, 85 + 5 * i, 0.0)
    assert cur.index == 2
    off = rep.Curriculum(_plan(mastery=0.0), "full")
    off.at(0, 0.0, 0.0)
    for i in range(10):
        off.observe({"kv": 1.0, "hop2": 1.0}, 5 * i, 0.0)
    assert off.index == 0


def test_write_json_replaces_whole_files(tmp_path):
    path = tmp_path / "results.json"
    rep.write_json(path, {"a": 1})
    rep.write_json(path, {"a": 2, "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_kv_bytes_counts_ring_and_summaries():
    import ksa_report

    model = {"shape": {"num_hidden_layers": 4, "num_key_value_heads": 2, "head_dim": 32}, "chunk": 8,
             "windows": [4, 4, 4, 1 << 20]}
    per = 2 * 2 * 32 * 2  # K and V, 2 heads, 32 dims, bf16
    got = ksa_report.kv_bytes(model, 1024)
    assert got["full"] == 4 * 1024 * per
    assert got["ksa"] == (3 * (40 + 128) + 1024) * per  # ring (W+1)*C = 40, 1024/8 summaries; one full layer
    assert got["sca"] == (3 * 40 + 1024) * per
    assert ksa_report.kv_bytes(model, 32)["ksa"] == 4 * 32 * per  # inside the window: every layer is full


def test_trailing_mean_is_a_running_window_average():
    import ksa_report

    values = [float(v) for v in np.random.default_rng(0).random(20)]
    window = 4
    full = np.convolve(values, np.ones(window) / window, mode="valid")  # complete windows only
    got = ksa_report.trailing_mean(values, window)
    np.testing.assert_allclose(got[window - 1:], full, rtol=1e-12)
    assert got[:window - 1] == pytest.approx([np.mean(values[:i + 1]) for i in range(window - 1)])
    assert ksa_report.trailing_mean(values, 1) == pytest.approx(values)


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


def test_needle_probe_breakdown_and_supervised_steps(tmp_path):
    import ksa_needle_probe as probe

    model = rep.build_models("smoke", 2, "reference", 0)["ksa"]
    res = probe.needle_answers(model, 24, 256, batch=10)
    assert len(res["where"]) == 24 and set(res["value"]) <= set(range(rep.N_NEEDLES))
    # the position found is the needle the answer asks for: the value there is the answer token
    draw = rep.make_batch(np.random.default_rng([probe.PROBE_SEED, 256, 0]), 10, 256, {"needle": 1})
    ((_, ps),) = draw.answers
    assert (draw.ids[:, ps[0]] == res["value"][:10] + rep.NEEDLE0).all()
    # a rigged result: value 3 always wrong, everything else right
    rigged = {"where": np.arange(16) * 9, "value": np.arange(16) % 4,
              "answer": np.where(np.arange(16) % 4 == 3, rep.NEEDLE0 + 17, rep.NEEDLE0 + np.arange(16) % 4)}
    rigged["right"] = rigged["answer"] == rigged["value"] + rep.NEEDLE0
    b = probe.breakdown(rigged, 256)
    assert b["acc"] == 0.75 and b["by_value"]["x3"] == {"acc": 0.0, "n": 4} and b["by_value"]["x0"]["acc"] == 1.0
    assert b["wrong_answers"] == {"x17": 4} and sum(a["n"] for a in b["by_offset"].values()) == 16
    with torch.no_grad():  # x3's output row made a copy of x17's, at half its length
        head = model.get_output_embeddings().weight
        head[rep.NEEDLE0 + 3] = 0.5 * head[rep.NEEDLE0 + 17]
    h = probe.head_geometry(model, b)
    assert (h["target"], h["never"], h["cos_never"]) == ("x17", ["x3"], 1.0) and h["cos_rest"] < 0.9
    assert h["norm_never"] < h["norm_rest"]
    result = probe.main(["--out", str(tmp_path), "--length", "256", "--rows", "8", "--steps", "2", "--batch", "4",
                         "--eval-rows", "4", "--policies", "ksa"])
    sup = result["policies"]["ksa"]["supervised"]
    assert len(sup["curve"]) == 2 and set(sup["after"]) == {"needle", "kv", "hop2", "count", "all"}
    assert json.loads((tmp_path / "results.json").read_text())["policies"]["ksa"]["breakdown"]["acc"] is not None


def test_exact_match_reward():
    import ksa_grpo

    assert ksa_grpo.exact_match([5, 7, rep.EOS], [5, 7]) == 1.0
    assert ksa_grpo.exact_match([5, 7], [5, 7]) == 1.0
    assert ksa_grpo.exact_match([5, rep.EOS], [5, 7]) == 0.0
    assert ksa_grpo.exact_match([], [5]) == 0.0


@pytest.mark.slow
def test_conversion_smoke_on_the_saved_full_model(replication, tmp_path):
    """self_distill on the replication's full model: every phase lands in results.json, the student is a
    KSA model with the replication's windows, and `kept` is distilled / teacher."""
    import ksa_conversion

    root, _ = replication
    result = ksa_conversion.main(["--models", str(root / "models"), "--out", str(tmp_path / "conv"), "--device", "cpu",
                                  "--steps", "4", "--seq-len", "128", "--text-seqs", "8", "--window", "2",
                                  "--eval-lengths", "256", "--eval-rows", "4", "--student-dir", str(tmp_path / "student")])
    saved = json.loads((tmp_path / "conv" / "results.json").read_text())
    assert saved["status"] == "done" and saved["scale"] == "cpu"
    for key in ("teacher", "converted_undistilled", "distilled"):
        assert set(saved[key]["accuracy"]["256"]) == {"needle", "kv", "hop2", "count", "all"}
    assert saved["distill"]["steps"] == 4 and saved["distill"]["joint_steps"] == 3
    assert [h["stage"] for h in result["distill"]["history"]] == ["summary", "joint", "joint", "joint"]
    student = json.loads((tmp_path / "student" / "config.json").read_text())
    assert student["model_type"] == "ksa_qwen3" and student["ksa_windows"][:3] == [2, 2, 2]
    t, d = saved["teacher"]["accuracy"]["256"]["all"], saved["distilled"]["accuracy"]["256"]["all"]
    assert saved["kept"]["256"]["all"] == (d / t if t > 0 else None)


@pytest.mark.slow
def test_packed_models_load_back(replication, tmp_path):
    import tarfile

    from transformers import AutoModelForCausalLM

    import ksa  # noqa: F401  (registers the KSA model types)

    root, _ = replication
    packed = rep.pack_models(root / "models", ["full", "ksa"], tmp_path / "packed")
    assert [Path(p).name for p in packed] == ["full.tar", "ksa.tar"]
    for name in ("full", "ksa"):
        with tarfile.open(tmp_path / "packed" / f"{name}.tar") as tar:
            tar.extractall(tmp_path / "back", filter="data")
        back = AutoModelForCausalLM.from_pretrained(tmp_path / "back" / name, dtype=torch.float32)
        orig = AutoModelForCausalLM.from_pretrained(root / "models" / name, dtype=torch.float32)
        for (n, a), (_, b) in zip(back.state_dict().items(), orig.state_dict().items(), strict=True):
            assert torch.equal(a, b.to(torch.bfloat16).float()), n  # bf16 rounding, nothing else


@pytest.mark.slow
def test_report_from_the_smoke_results(replication, tmp_path):
    import ksa_report

    root, _ = replication
    text = ksa_report.main(["--replication", str(root / "out" / "results.json"), "--docs", str(tmp_path),
                            "--name", "t", "--md", str(tmp_path / "report.md"), "--long-from", "512"])
    assert (tmp_path / "t_replication.png").stat().st_size > 10_000
    assert (tmp_path / "report.md").read_text() == text
    saved = json.loads((root / "out" / "results.json").read_text())
    kv_full_256 = saved["variants"]["full"]["accuracy"]["256"]["kv"]
    assert f"| kv | full | {kv_full_256:.2f} |" in text
    assert "KSA ≥ SCA on retrieval at ≥ 512 tokens" in text


def test_grpo_on_one_task_trains_that_task_alone_and_reports_it(tmp_path):
    """--tasks kv: every step's prompts are the kv prompts an all-task run draws (the same rows, nothing
    else), the rewards and the report name kv alone, and the held-out accuracy still covers every task."""
    import ksa_grpo
    import ksa_report

    every = ksa_grpo.step_prompts(0, 3, 2, 256)
    assert ksa_grpo.step_prompts(0, 3, 2, 256, ["kv"]) == [item for item in every if item[0] == "kv"]
    result = ksa_grpo.main(["--smoke", "--device", "cpu", "--tasks", "kv", "--out", str(tmp_path)])
    for row in result["policies"].values():
        assert [set(s["reward"]) for s in row["steps"]] == [{"kv"}] * 3
        assert [s["groups"] for s in row["steps"]] == [2] * 3  # 2 prompts of one task
        assert set(row["acc_before"]) == {"needle", "kv", "hop2", "count", "all"}
    assert set(ksa_report.reward_change(result["policies"]["ksa"])) == {"kv"}
    head, _, *rows = ksa_report.grpo_md(result).split("\n")[2:]
    assert head.startswith("| policy | steps | kv | held-out")
    assert [r.count(" → ") for r in rows] == [2, 2]  # per policy: kv's reward, the held-out accuracy
    assert ksa_report.plot_grpo(result, tmp_path / "g.png").stat().st_size > 5_000
    with pytest.raises(SystemExit):
        ksa_grpo.parse_args(["--smoke", "--tasks", "kv,recall"])


def test_goal_verdicts_say_not_decided_when_grpo_moved_nothing():
    """The GRPO goal is vacuous when the full policy's reward rose on no task: 'not decided', not 'no'; the
    conversion line names what each retrieval task kept (distilled / teacher)."""
    import ksa_report

    def steps(rewards):  # 4 steps: first quarter = steps[0], last quarter = steps[-1]
        return {"steps": [{"reward": dict(zip(ksa_report.TASKS, r, strict=True))} for r in rewards]}

    flat = steps([(1.0, 1.0, 0.1, 0.1)] * 4)
    rising = steps([(0.5, 1.0, 0.1, 0.1), (0.6, 1.0, 0.1, 0.1), (0.7, 1.0, 0.1, 0.1), (0.9, 1.0, 0.1, 0.1)])
    text = ksa_report.goals_md(None, {"policies": {"full": flat, "ksa": flat}}, None, 8192)
    assert "not decided" in text
    text = ksa_report.goals_md(None, {"policies": {"full": rising, "ksa": rising}}, None, 8192)
    assert "on ['needle']" in text and text.rstrip().endswith(": yes")
    text = ksa_report.goals_md(None, {"policies": {"full": rising, "ksa": flat}}, None, 8192)
    assert text.rstrip().endswith(": no")

    teacher = {"8192": {"needle": 1.0, "kv": 1.0, "hop2": 0.2, "count": 1.0, "all": 0.8}}
    student = {"8192": {"needle": 0.5, "kv": 0.99, "hop2": 0.1, "count": 0.1, "all": 0.56}}
    import ksa_conversion

    conv = {"teacher": {"accuracy": teacher}, "distilled": {"accuracy": student}, "kept": ksa_conversion.kept(teacher, student)}
    text = ksa_report.goals_md(None, None, conv, 8192)
    assert "no (0.56 vs 0.80, 70%)" in text
    assert "needle 50%, kv 99%, hop2 50% kept" in text
