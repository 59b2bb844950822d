"""The recipe schema: defaults, dotted overrides (with list indices), one-line errors naming the fix."""

from __future__ import annotations

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
    ],
)
def test_bad_recipes_name_the_key(raw, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(")):
        validate_recipe(raw)


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "none.yaml")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "model: [unclosed"))
    with pytest.raises(RecipeError, match="section.key=value"):
        load_recipe(write(tmp_path, "model: {path: m}\ndata: {sources: [{generate: all}]}\n"), ["rollout"])
