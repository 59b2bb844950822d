"""The GRPO group through the learner: the trainer's group ids decide which samples share a packed
prompt; one drift function for one rank and many; the shared-prompt attention entered once per row."""

from __future__ import annotations

import pytest
import torch

from golong.config import AlgoConfig, ModelConfig, OptimConfig
from golong.distributed import LocalContext
from golong.learner import Learner, Sample, _groups, sampler_drift


def test_groups_follow_group_ids_not_prompt_tokens():
    p, q = [1, 2, 3], [4, 5]
    samples = [Sample(p, [9], 1.0, group_id=0), Sample(q, [9], 1.0), Sample(p, [8], 1.0, group_id=0),
               Sample(p, [7], 1.0, group_id=1), Sample(q, [9], 1.0)]
    # the same prompt in two groups stays two groups; samples without an id stand alone
    assert _groups(samples) == [[0, 2], [1], [3], [4]]
    with pytest.raises(ValueError, match="different prompts"):
        _groups([Sample(p, [9], 1.0, group_id="g"), Sample(q, [9], 1.0, group_id="g")])


def test_learner_shares_a_prompt_per_group_id(tiny_model_dir):
    learner = Learner(ModelConfig(path=str(tiny_model_dir)), OptimConfig(micro_batch_tokens=4096), AlgoConfig(), device="cpu")
    p = [10, 11, 12, 13]
    grouped = [Sample(p, [20 + i], 1.0, group_id=7) for i in range(3)]
    rows = learner._rows(grouped)
    assert len(rows) == 1 and rows[0][1].members is not None and rows[0][0] == [0, 1, 2]
    alone = [Sample(p, [20 + i], 1.0) for i in range(3)]
    assert all(row.members is None for _, row in learner._rows(alone))


def test_trainer_samples_carry_their_group_id():
    from types import SimpleNamespace

    from golong.mixture import Prompt
    from golong.rewarding import RewardResult
    from golong.rollout.base import Completion
    from golong.trainer import Group, Trainer

    trainer = Trainer.__new__(Trainer)  # make_samples needs only the recipe's algo section
    trainer.recipe = SimpleNamespace(algo=AlgoConfig(estimator="grpo"))
    groups = []
    for g in range(2):
        prompt = Prompt({}, [1, 2], "qa", False, 0)
        comps = [Completion(g, [1, 2], [3, 4 + k], "", [-1.0, -1.0], "stop") for k in range(2)]
        groups.append(Group(prompt, comps, [RewardResult(float(k)) for k in range(2)]))
    samples, _ = trainer.make_samples(groups)
    assert [s.group_id for s in samples] == [0, 0, 1, 1]


def test_one_drift_function_for_one_rank_equals_the_token_mean():
    g = torch.Generator().manual_seed(0)
    samples, lps, diffs = [], [], []
    for n in (3, 5, 2):
        lp = torch.randn(n, generator=g)
        sp = (lp + torch.randn(n, generator=g) * 0.1).tolist()
        samples.append(Sample([1], [2] * n, 0.0, sampler_logprobs=sp))
        lps.append(lp)
        diffs.append((torch.tensor(sp) - lp).abs())
    samples.append(Sample([1], [2], 0.0))  # no sampler log-probs: left out
    lps.append(torch.zeros(1))
    got = sampler_drift(samples, lps, LocalContext(torch.device("cpu")))
    assert got["drift"] == float(torch.cat(diffs).mean())
    assert sampler_drift(samples[-1:], lps[-1:], LocalContext(torch.device("cpu"))) == {}


def test_shared_attention_is_entered_once_per_row(tiny_model_dir, monkeypatch):
    import golong.learner as learner_mod
    import golong.packing as packing

    entered = []
    real = packing.shared_attention

    def counting(model, row):
        if row.members is not None:
            entered.append(row)
        return real(model, row)

    monkeypatch.setattr(packing, "shared_attention", counting)
    monkeypatch.setattr(learner_mod, "shared_attention", counting)
    learner = Learner(ModelConfig(path=str(tiny_model_dir)), OptimConfig(micro_batch_tokens=4096), AlgoConfig(), device="cpu")
    learner.train_step([Sample([10, 11, 12], [20 + i, 30], 1.0 - i, group_id=0) for i in range(3)])
    assert len(entered) == 1
