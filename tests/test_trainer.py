"""The GRPO loop in inline mode on the tiny model: metrics, dynamic sampling, resume equality, errors."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from golong.cli import app
from golong.config import RecipeError, validate_recipe
from golong.rewarding import RewardPool
from golong.trainer import Trainer, train


def digit_share(row, response, **variant):
    """A reward with spread on random text: the share of digits among the response characters."""
    return sum(ch.isdigit() for ch in response) / max(1, len(response))


def always_one(row, response, **variant):
    return 1.0


def recipe(model_dir, out, **over):
    raw = {
        "model": {"path": str(model_dir)},
        "data": {"sources": [{"generate": ["precise_retrieval", "comprehension"], "length": 100, "n": 6}],
                 "max_prompt_tokens": 160},
        "rollout": {"group_size": 3, "prompts_per_step": 2, "max_new_tokens": 8, "batch_size": 8},
        "algo": {"dynamic_sampling": False},
        "optim": {"lr": 1e-3},
        "cluster": {"mode": "inline"},
        "trainer": {"steps": 2, "output_dir": str(out), "save_every": 2},
    }
    for key, value in over.items():
        section, field = key.split("__")
        raw.setdefault(section, {})[field] = value
    return validate_recipe(raw)


def pool(fn=digit_share):
    return RewardPool(mode="thread", score_fn=fn)


def strip_times(history):
    """Metrics that must repeat exactly: without wall times and without `compiled_graphs`, which counts
    what this process's compile cache lacked (a run after another in one process compiles less)."""
    return [{k: v for k, v in h.items()
             if not (k.endswith("_time") or k.endswith("_s") or k in ("tokens_per_s", "compiled_graphs"))}
            for h in history]


def test_inline_run_logs_per_reward_type_metrics_and_checkpoints(tiny_model_dir, tmp_path):
    hist = train(recipe(tiny_model_dir, tmp_path / "run"), rewards=pool(), quiet=True)
    assert [h["step"] for h in hist] == [1, 2]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines == hist
    for h in hist:
        assert h["groups_kept"] == 2 and h["samples_trained"] == 6
        kinds = {k.split("/", 1)[1] for k in h if k.startswith("reward/")} - {"all"}
        assert kinds <= {"EM", "Accuracy"} and kinds
        assert 0 <= h["reward/all"] <= 1 and "loss" in h and h["response_len/all"] <= 8
        assert h["reward_errors/all"] == 0 and h["dropped/all"] == 0
    assert (tmp_path / "run" / "checkpoints" / "step_000002" / "learner").is_dir()
    assert (tmp_path / "run" / "recipe.yaml").is_file()


def test_resume_reproduces_the_uninterrupted_run(tiny_model_dir, tmp_path):
    straight = train(recipe(tiny_model_dir, tmp_path / "a", trainer__steps=4), rewards=pool(), quiet=True)
    train(recipe(tiny_model_dir, tmp_path / "b", trainer__steps=2), rewards=pool(), quiet=True)
    resumed = train(recipe(tiny_model_dir, tmp_path / "b", trainer__steps=4), resume=tmp_path / "b",
                    rewards=pool(), quiet=True)
    assert len(resumed) == 4
    assert any(abs(h.get("loss", 0.0)) > 0 for h in straight)  # the policy really changed
    assert strip_times(resumed) == strip_times(straight)


def test_dynamic_sampling_drops_constant_groups_and_refills(tiny_model_dir, tmp_path):
    r = recipe(tiny_model_dir, tmp_path / "ds", trainer__steps=1, algo__dynamic_sampling=True,
               algo__max_generation_rounds=3)
    (h,) = train(r, rewards=pool(always_one), quiet=True)
    assert h["rounds"] == 3 and h["groups_generated"] == 6 and h["groups_kept"] == 0
    assert h["dropped/all"] == 6 and h["samples_trained"] == 0 and "loss" not in h
    (h,) = train(r.model_copy(update={"trainer": r.trainer.model_copy(update={"output_dir": str(tmp_path / "ds2")})}),
                 rewards=pool(), quiet=True)
    assert h["rounds"] == 1 and h["groups_kept"] == 2  # digit share differs within a group


def test_rollout_is_weights_are_logged_and_exactly_one_when_the_sampler_is_the_learner(tiny_model_dir, tmp_path):
    """Inline with shared weights the engine samples from the learner's own float32 model: every
    ratio pi_old / pi_sampler is 1 up to float noise, so nothing is clipped or vetoed."""
    r = recipe(tiny_model_dir, tmp_path / "is", trainer__steps=1, algo__rollout_is="token", algo__rollout_is_veto=1e-4)
    (h,) = train(r, rewards=pool(), quiet=True)
    assert h["is_weight_mean"] == pytest.approx(1.0, abs=1e-4) and h["drift"] == pytest.approx(0.0, abs=1e-4)
    assert h["is_clipped_frac"] == 0.0 and h["is_vetoed_frac"] == 0.0


def spread_unless_em(row, response, **variant):
    """EM rows: always 1 (no spread, dropped); other rows: a number that differs between responses."""
    import zlib

    return 1.0 if row["data_source"] == "EM" else zlib.crc32(response.encode()) / 2**32


def test_dynamic_sampling_fills_the_batch_in_rounds_and_keeps_the_first_groups(tiny_model_dir, tmp_path):
    r = recipe(tiny_model_dir, tmp_path / "rounds", trainer__steps=1, algo__dynamic_sampling=True,
               algo__prompts_per_round=6, algo__max_generation_rounds=20, rollout__prompts_per_step=2)
    trainer = Trainer(r, rewards=pool(spread_unless_em), quiet=True)
    try:
        batch = trainer.collect()
    finally:
        trainer.cluster.shutdown()
    with_spread = [g for g in batch.generated if g.prompt.row["data_source"] != "EM"]
    assert len(batch.generated) == 6 * batch.rounds  # whole rounds of prompts_per_round
    before_last = [g for g in batch.generated[:-6] if g.prompt.row["data_source"] != "EM"]
    assert len(with_spread) >= 2 > len(before_last)  # stopped at the round that filled it
    assert batch.kept == with_spread[:2]  # exactly prompts_per_step: the first kept, in generation order
    assert batch.surplus == len(with_spread) - 2 > 0
    assert sum(batch.dropped.values()) == len(batch.generated) - len(with_spread)


def test_dynamic_sampling_that_cannot_fill_the_batch_trains_or_stops(tiny_model_dir, tmp_path):
    from golong.trainer import DynamicSamplingError

    r = recipe(tiny_model_dir, tmp_path / "short", trainer__steps=1, algo__dynamic_sampling=True,
               algo__prompts_per_round=2, algo__max_generation_rounds=2, algo__underfilled="error")
    with pytest.raises(DynamicSamplingError, match=r"kept 0 of 2 groups in 2 rounds of 2 prompts at step 1"):
        train(r, rewards=pool(always_one), quiet=True)


def test_warm_start_fits_the_reference_answers(tiny_model_dir, tmp_path):
    r = recipe(tiny_model_dir, tmp_path / "ws", trainer__warm_start_steps=4, trainer__warm_start_prompts=2,
               rollout__max_new_tokens=32, optim__lr=5e-3)
    t = Trainer(r, rewards=pool(), quiet=True)
    try:
        logs = t.warm_start()
    finally:
        t.cluster.shutdown()
    assert logs[-1]["nll"] < 0.8 * logs[0]["nll"]


def test_prompts_over_the_limit_are_left_truncated_and_counted(tiny_model_dir, tmp_path):
    r = recipe(tiny_model_dir, tmp_path / "tr", trainer__steps=1, data__max_prompt_tokens=40)
    t = Trainer(r, rewards=pool(), quiet=True)
    try:
        row = t.mixture.sources[0][0]
        ids, cut = t.mixture.encode(row)
        full = t.mixture.tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
        full = full["input_ids"] if hasattr(full, "keys") else full
        assert cut and ids == list(full)[-40:]
        (h,) = t.run()
    finally:
        t.cluster.shutdown()
    assert h["truncated/all"] == 2


def test_mixture_order_is_seeded_weighted_and_resumable(tiny_model_dir, tmp_path):
    from golong.mixture import Mixture

    r = recipe(tiny_model_dir, tmp_path / "mx")
    sources = [{"generate": "precise_retrieval", "length": 100, "n": 4, "weight": 3.0},
               {"generate": "comprehension", "length": 100, "n": 4, "weight": 1.0}]
    data = r.data.model_copy(update={"sources": [type(r.data.sources[0])(**s) for s in sources]})
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    a, b = Mixture(data, tok), Mixture(data, tok)
    first = [a.next_row() for _ in range(200)]
    assert first == [b.next_row() for _ in range(200)]
    share = sum(s == 0 for s, _ in first) / 200
    assert 0.65 < share < 0.85  # weight 3:1
    for s in (0, 1):  # each epoch visits every row exactly once
        seen = [i for src, i in first if src == s][:4]
        assert sorted(seen) == [0, 1, 2, 3]
    c = Mixture(data, tok)
    [c.next_row() for _ in range(50)]
    d = Mixture(data, tok)
    d.load_state_dict(c.state_dict())
    assert [c.next_row() for _ in range(30)] == [d.next_row() for _ in range(30)]


# --- command line -----------------------------------------------------------------------------------
runner = CliRunner()


def write_recipe(path, model_dir, out, **extra):
    import yaml

    r = recipe(model_dir, out).model_dump(mode="json")
    r.update(extra)
    path.write_text(yaml.safe_dump(r))
    return str(path)


def test_cli_dry_run_prints_the_resolved_recipe(tiny_model_dir, tmp_path):
    import yaml

    path = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "o")
    res = runner.invoke(app, ["train", path, "rollout.group_size=5", "--dry-run"])
    assert res.exit_code == 0
    assert yaml.safe_load(res.output)["rollout"]["group_size"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rollout.group_sise=5"], "did you mean 'rollout.group_size'"),
        (["rollout.group_size"], "must look like section.key=value"),
        (["rollout.group_size=zero"], "rollout.group_size"),
        (["rollout.engine=vllm", "trainer.steps=1"], "vllm"),
        (["data.sources.0.generate=null", "data.sources.0.path=/no/such/data.parquet"], "/no/such/data.parquet"),
        (["data.sources.0.generate=[no_such_task]"], "unknown task"),
        # the tiny model never writes </think>: every reward is 0, no group has spread
        (["trainer.steps=1", "algo.dynamic_sampling=true", "algo.max_generation_rounds=1", "algo.underfilled=error",
          "reward.workers=1"], "dynamic sampling kept 0 of"),
    ],
)
def test_cli_user_errors_are_one_line(tiny_model_dir, tmp_path, args, message):
    path = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "o")
    res = runner.invoke(app, ["train", path, *args])
    assert res.exit_code == 1, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1] and "Traceback" not in res.output


def test_cli_resume_without_a_checkpoint_is_a_clear_error(tiny_model_dir, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "o")
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["train", path, "--resume", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "no recipe.yaml in it (not a golong run folder?)" in res.output


def test_plot_writes_per_reward_type_curves(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    hist = [{"step": s, "reward/EM": s / 10, "reward/all": s / 20, "pass_rate/EM": 0.1 * s} for s in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))
    res = runner.invoke(app, ["plot", str(run)])
    assert res.exit_code == 0 and (run / "reward_curves.png").stat().st_size > 1000
    res = runner.invoke(app, ["plot", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "metrics.jsonl" in res.output


def test_unknown_recipe_key_names_the_nearest(tiny_model_dir, tmp_path):
    with pytest.raises(RecipeError, match="trainer.save_every"):
        validate_recipe({**recipe(tiny_model_dir, tmp_path).model_dump(), "trainer": {"save_evry": 3}})


def test_eval_every_logs_heldout_metrics(tiny_model_dir, tmp_path):
    r = recipe(tiny_model_dir, tmp_path / "ev", trainer__steps=2,
               eval__every=1, eval__tasks=["precise_retrieval"], eval__lengths=[100], eval__n=2,
               eval__max_new_tokens=4)
    hist = train(r, rewards=pool(), quiet=True)
    for h in hist:
        assert 0.0 <= h["eval/reward/all"] <= 1.0 and "eval/pass@1/all" in h
    assert (tmp_path / "ev" / "eval" / "step_000002" / "results.json").is_file()


def hang_on_heldout(row, response, **variant):
    """Hangs for held-out rows (the evaluation's), scores training rows 0.5."""
    if row["extra_info"].get("split") == "heldout":
        time.sleep(60)
    return 0.5


def test_eval_scores_in_the_runs_reward_pool_under_its_time_limit(tiny_model_dir, tmp_path):
    r = recipe(tiny_model_dir, tmp_path / "evh", trainer__steps=1, eval__every=1, eval__tasks=["precise_retrieval"],
               eval__lengths=[100], eval__n=2, eval__max_new_tokens=4)
    t0 = time.perf_counter()
    (h,) = train(r, rewards=RewardPool(mode="thread", timeout_s=0.2, score_fn=hang_on_heldout), quiet=True)
    assert time.perf_counter() - t0 < 50 and h["eval/reward/all"] == 0.0 and h["reward/all"] == 0.5
    res = json.loads((tmp_path / "evh" / "eval" / "step_000001" / "results.json").read_text())
    assert res["summary"]["step_000001"]["all"]["errors"] == 2
    assert "rollout/concurrency" in h  # the inline engine's stats of its last generate call


def test_fast_engine_trains_inline(tiny_model_dir, tmp_path):
    hist = train(recipe(tiny_model_dir, tmp_path / "fast", rollout__engine="fast"), rewards=pool(), quiet=True)
    assert [h["step"] for h in hist] == [1, 2]
    assert all(h["samples_trained"] == 6 and h["drift"] < 1e-3 for h in hist)


def test_progress_bar_says_what_each_step_is_doing(tiny_model_dir, tmp_path, monkeypatch):
    """Beside the bar: each step's phases in order (rollout, rewards, learner, weight sync, and held-out
    evaluation where it runs); during a run's first step, the first-step note (with compiled layers or
    decode: that it compiles) on every phase, and on no later step's."""
    import golong.trainer as trainer_mod

    said = []

    class Recording(trainer_mod._Progress):
        def phase(self, what):
            said.append(what)

    monkeypatch.setattr(trainer_mod, "_Progress", Recording)
    r = recipe(tiny_model_dir, tmp_path / "run", eval__every=2, eval__tasks=["precise_retrieval"], eval__lengths=[100],
               eval__n=2, eval__max_new_tokens=4)
    assert trainer_mod.first_step_hint(recipe(tiny_model_dir, tmp_path / "c", rollout__compile_decode=True))
    assert trainer_mod.first_step_hint(recipe(tiny_model_dir, tmp_path / "c", model__compile=True))
    assert not trainer_mod.first_step_hint(r)  # nothing compiles: no note
    monkeypatch.setattr(trainer_mod, "first_step_hint", lambda recipe: "note")
    Trainer(r, rewards=pool(), quiet=True).run()
    step = ["rollout: 2 prompts x 3", "rewards", "learner", "weight sync"]
    assert said == [f"{p} (note)" for p in step] + step + ["held-out evaluation"]
