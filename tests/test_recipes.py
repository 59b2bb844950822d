"""Every recipe under recipes/ validates, and the GoLongRL-4B recipes hold the paper's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from golong.cli import app
from golong.config import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert {"demo.yaml", "golongrl_qwen3_4b_tmn.yaml", "golongrl_qwen3_4b_grpo.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_dry_runs(path):
    load_recipe(path)
    res = CliRunner().invoke(app, ["train", str(path), "--dry-run"])
    assert res.exit_code == 0 and "model:" in res.output


@pytest.mark.parametrize(("name", "estimator"), [("golongrl_qwen3_4b_tmn.yaml", "tmn_reweight"),
                                                 ("golongrl_qwen3_4b_grpo.yaml", "grpo")])
def test_golongrl_4b_settings(name, estimator):
    r = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / name)
    assert r.model.path == "Qwen/Qwen3-4B-Thinking-2507"
    assert (r.rollout.group_size, r.rollout.prompts_per_step, r.rollout.temperature) == (16, 128, 1.0)
    assert (r.data.max_prompt_tokens, r.rollout.max_new_tokens) == (163840, 16384)
    assert r.data.sources[0].path == "Kwai-Klear/GoLongRL"
    assert (r.optim.lr, r.optim.warmup_steps, r.optim.weight_decay, r.optim.grad_clip) == (2e-6, 5, 0.1, 1.0)
    a = r.algo
    assert (a.estimator, a.clip_low, a.clip_high, a.dual_clip, a.kl_coef, a.loss_agg) == (
        estimator, 0.2, 0.28, 3.0, 0.0, "token-mean")
    # dynamic sampling: rounds of 512 prompts, at most 32, until 128 groups are kept, else stop
    assert (a.dynamic_sampling, a.prompts_per_round, a.max_generation_rounds, a.underfilled) == (True, 512, 32, "error")
    # token-level rollout importance sampling, weights truncated to [0.5, 5], veto 1e-4 (the 4B script)
    assert (a.rollout_is, tuple(a.rollout_is_clip), a.rollout_is_mode, a.rollout_is_veto) == ("token", (0.5, 5.0), "clip", 1e-4)


def test_vllm_engine_is_a_one_line_error_until_it_exists(tmp_path):
    path = Path(__file__).resolve().parents[1] / "recipes" / "golongrl_qwen3_4b_tmn.yaml"
    res = CliRunner().invoke(app, ["train", str(path), "cluster.mode=inline"])
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1].startswith("error: rollout.engine=vllm")
