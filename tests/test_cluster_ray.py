"""Ray mode: learner and rollout actors in a placement group, weight sync, rollout actor restart."""

from __future__ import annotations

import pytest

from golong.rollout.base import SamplingParams, encode_chat
from tests.test_trainer import recipe

pytestmark = pytest.mark.ray


def test_ray_run_trains_and_syncs_weights(ray_session, tiny_model_dir, tmp_path):
    from golong.trainer import train

    r = recipe(tiny_model_dir, tmp_path / "ray", cluster__mode="ray", trainer__steps=2, optim__lr=1e-2,
               reward__workers=2)
    hist = train(r, quiet=True)
    assert [h["step"] for h in hist] == [1, 2]
    assert all(h["samples_trained"] == 6 and "loss" in h for h in hist)
    assert all(h["reward_errors/all"] == 0 for h in hist)  # real rewards ran as Ray tasks
    assert all(h["rollout/concurrency"] > 0 for h in hist)  # the engine's stats reach the driver from its actor
    # Step 2 samples come from the engine after the sync: sampler and learner log-probs agree up
    # to numerics even though step 1 changed the weights with a large learning rate.
    assert hist[1]["drift"] < 1e-3
    assert (tmp_path / "ray" / "checkpoints" / "step_000002").is_dir()


def test_a_dead_rollout_actor_is_restarted_and_the_generation_retried(ray_session, tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from golong.cluster import RayCluster

    r = recipe(tiny_model_dir, tmp_path / "restart", cluster__mode="ray")
    cluster = RayCluster(r)
    try:
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        prompts = [encode_chat(tok, [{"role": "user", "content": "find the secret key"}])]
        params = SamplingParams(max_new_tokens=6, seed=9)
        before = cluster.generate(prompts, 2, params)
        ray_session.kill(cluster.engine, no_restart=True)
        after = cluster.generate(prompts, 2, params)
    finally:
        cluster.shutdown()
    assert cluster.restarts == 1 and "rollout actor died" in capsys.readouterr().out
    assert [c.response_ids for c in after[0]] == [c.response_ids for c in before[0]]
