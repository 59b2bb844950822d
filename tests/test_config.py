"""The recipe schema: defaults, dotted overrides (with list indices), one-line errors naming the fix."""

from __future__ import annotations

import re

import pytest

from golong.config import RecipeError, load_recipe, validate_recipe

BASE = {"model": {"path": "m"}, "data": {"sources": [{"generate": "all"}]}}


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "model: {path: m}\ndata: {sources: [{generate: all}, {path: x.jsonl}]}\n")
    r = load_recipe(p, ["rollout.group_size=4", "data.sources.1.weight=2.5", "reward.variant={a: 1}",
                        "cluster.mode=inline", "trainer.warm_start_steps=3"])
    assert r.rollout.group_size == 4 and r.data.sources[1].weight == 2.5 and r.reward.variant == {"a": 1}
    assert r.cluster.mode == "inline" and r.trainer.warm_start_steps == 3
    assert r.algo.estimator == "tmn_reweight" and r.cluster.share_weights and r.cluster.learner_cpus == 1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**BASE, "rollout": {"gruop_size": 2}}, "did you mean 'rollout.group_size'"),
        ({**BASE, "clustr": {}}, "did you mean 'cluster'"),
        ({**BASE, "cluster": {"mode": "slurm"}}, "cluster.mode"),
        ({**BASE, "rollout": {"group_size": 0}}, "rollout.group_size"),
        ({"data": BASE["data"]}, "'model' is required"),
        ({**BASE, "algo": {"dual_clip": 1.0}}, "algo.dual_clip must be > 1 (got 1.0); set null"),
        ({**BASE, "algo": {"rollout_is_clip": [1.5, 5.0]}}, "algo.rollout_is_clip must be [low, high]"),
        ({**BASE, "algo": {"rollout_is": "geometric"}}, "algo.rollout_is"),
        ({**BASE, "algo": {"underfilled": "skip"}}, "algo.underfilled"),
    ],
)
def test_bad_recipes_name_the_key(raw, message):
    with pytest.raises(RecipeError, match=re.escape(message)) as err:
        validate_recipe(raw)
    assert "\n" not in str(err.value)


def test_dr_grpo_aggregates_over_a_constant_length():
    r = validate_recipe({**BASE, "algo": {"estimator": "dr_grpo"}, "rollout": {"max_new_tokens": 512}})
    assert r.algo.loss_agg == "seq-mean-token-sum-norm" and r.algo.loss_norm_tokens == 512
    r = validate_recipe({**BASE, "algo": {"estimator": "dr_grpo", "loss_agg": "token-mean", "loss_norm_tokens": 64}})
    assert r.algo.loss_agg == "token-mean" and r.algo.loss_norm_tokens == 64  # what the recipe says wins
    assert validate_recipe(BASE).algo.loss_agg == "token-mean"


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "none.yaml")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "model: [unclosed"))
    with pytest.raises(RecipeError, match="section.key=value"):
        load_recipe(write(tmp_path, "model: {path: m}\ndata: {sources: [{generate: all}]}\n"), ["rollout"])


def test_the_recipe_eval_section_is_the_eval_settings_golong_eval_uses(tmp_path):
    from golong.config import RESUME_FIELDS, EvalSettings

    p = write(tmp_path, "model: {path: m}\ndata: {sources: [{generate: all}]}\neval: {every: 5, path: held.parquet, k: 2}\n")
    e = load_recipe(p).eval
    assert isinstance(e, EvalSettings) and e.data == ["held.parquet"] and e.every == 5 and e.k == 2
    assert e.task_names() is None and EvalSettings(tasks="precise_retrieval").task_names() == ["precise_retrieval"]
    assert list(e.resume_key()) == list(RESUME_FIELDS)
    with pytest.raises(RecipeError, match="eval.k"):
        load_recipe(p, ["eval.k=0"])


def test_golong_eval_option_errors_name_the_option(tmp_path):
    from typer.testing import CliRunner

    from golong.cli import app

    res = CliRunner().invoke(app, ["eval", "--model", "m", "--synth", "--lengths", "200", "-k", "0", "-o", str(tmp_path)])
    assert res.exit_code == 1 and "error: -k:" in res.output and "Traceback" not in res.output
