"""The policy-loss registry: losses by name with one signature; the learner calls the recipe's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from golong.algos import POLICY_LOSSES, compute_policy_loss, policy_loss, register_policy_loss
from golong.config import AlgoConfig


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lp = torch.randn(3, 5, generator=g) * 0.3 - 2
    old = lp + torch.randn(3, 5, generator=g) * 0.3
    mask = torch.tensor([[t < n for t in range(5)] for n in (5, 2, 4)])
    return lp, old, torch.randn(3, generator=g), mask


def test_ppo_clip_is_the_default_and_equals_policy_loss():
    algo = AlgoConfig(clip_low=0.1, clip_high=0.3, dual_clip=2.5)
    assert algo.policy_loss == "ppo_clip" and "ppo_clip" in POLICY_LOSSES
    lp, old, adv, mask = _batch()
    w = torch.rand(3, 5)
    got, gm = compute_policy_loss("ppo_clip", lp, old, adv, mask, agg="seq-mean-token-mean", total=4, norm_len=None,
                                  is_weights=w, config=algo)
    want, wm = policy_loss(lp, old, adv, mask, clip_low=0.1, clip_high=0.3, dual_clip=2.5, agg="seq-mean-token-mean",
                           total=4, is_weights=w)
    assert got.item() == want.item() and gm == wm


def test_unknown_loss_names_the_choices():
    lp, old, adv, mask = _batch()
    with pytest.raises(ValueError, match="unknown policy loss 'ppo'.*ppo_clip"):
        compute_policy_loss("ppo", lp, old, adv, mask, agg="token-mean", total=None, norm_len=None, is_weights=None,
                            config=AlgoConfig())


def test_a_loss_of_another_signature_is_refused_at_registration():
    with pytest.raises(TypeError, match="must take"):
        @register_policy_loss("bad_loss")
        def bad(logp, old_logp, advantages, mask, *, agg, config):  # no total, norm_len, is_weights
            raise AssertionError
    assert "bad_loss" not in POLICY_LOSSES


def test_a_registered_loss_is_what_the_learner_runs(tiny_model_dir):
    """A loss registered under a new name trains through Learner.train_step when the recipe names it."""
    from golong.config import ModelConfig, OptimConfig
    from golong.learner import Learner, Sample

    seen = []

    @register_policy_loss("test_reinforce")
    def reinforce(logp, old_logp, advantages, mask, *, agg, total, norm_len, is_weights, config):
        seen.append(config.policy_loss)
        m = mask.float()
        return -(advantages.unsqueeze(-1) * logp * m).sum() / m.sum(), {"reinforce": 1.0}

    try:
        learner = Learner(ModelConfig(path=str(tiny_model_dir)), OptimConfig(lr=1e-3), AlgoConfig(policy_loss="test_reinforce"),
                          device="cpu")
        m = learner.train_step([Sample([10, 11, 12], [20, 21], advantage=1.0)])
        assert seen == ["test_reinforce"] and m["reinforce"] == 1.0 and "clip_frac" not in m
        with pytest.raises(ValueError, match="unknown policy loss"):
            Learner(ModelConfig(path=str(tiny_model_dir)), OptimConfig(), AlgoConfig(policy_loss="nope"), device="cpu")
    finally:
        POLICY_LOSSES.pop("test_reinforce", None)


def test_shapes_are_checked():
    lp, old, adv, mask = _batch()
    with pytest.raises(ValueError, match="one shape"):
        compute_policy_loss("ppo_clip", lp, old[:, :3], adv, mask, agg="token-mean", total=None, norm_len=None,
                            is_weights=None, config=SimpleNamespace(clip_low=0.2, clip_high=0.28, dual_clip=None))
