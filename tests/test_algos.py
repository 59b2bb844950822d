"""Estimators and losses against hand-computed numbers and plain-Python loops."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from golong.algos import (
    ESTIMATORS,
    aggregate,
    compute_advantages,
    dynamic_sampling_mask,
    kl_penalty,
    policy_loss,
    rollout_is_weights,
    tmn_difficulty_weights,
)

# ------------------------------------------------------------------ plain-Python references


def _groups(rewards, gids):
    out: dict = {}
    for r, g in zip(rewards, gids, strict=True):
        out.setdefault(g, []).append(r)
    return out


def _mu_var(vals):
    """Group mean / unbiased variance with the G=1 convention (0, 1)."""
    if len(vals) == 1:
        return 0.0, 1.0
    return statistics.fmean(vals), statistics.variance(vals)


def ref_tmn(rewards, gids, tids, alpha=None, gamma=1.0, eps=1e-6):
    groups = _groups(rewards, gids)
    task_of = dict(zip(gids, tids, strict=True))
    stats = {g: _mu_var(v) for g, v in groups.items()}
    by_task: dict = {}
    for g in groups:
        by_task.setdefault(task_of[g], []).append(g)
    sigma = {k: math.sqrt(sum(stats[g][1] for g in gs) / len(gs)) for k, gs in by_task.items()}
    mubar = {k: sum(stats[g][0] for g in gs) / len(gs) for k, gs in by_task.items()}
    out = []
    for r, g in zip(rewards, gids, strict=True):
        k = task_of[g]
        mu = stats[g][0]
        a = (r - mu) / (sigma[k] + eps)
        if alpha is not None:
            m = mubar[k] if len(groups[g]) == 1 else alpha * mu + (1 - alpha) * mubar[k]
            p = sum(1 for x in groups[g] if x > m) / len(groups[g])
            a *= math.exp(gamma * (0.5 - p)) if r > mu else math.exp(gamma * (p - 0.5))
        out.append(a)
    return out


REWARDS = [1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.7, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3]
GIDS = ["A", "A", "A", "A", "B", "B", "C", "D", "D", "D", "D", "E", "E", "E", "E", "F"]
TIDS = ["f1"] * 7 + ["em"] * 8 + ["f1"]


# ------------------------------------------------------------------ hand-computed tables


def test_grpo_hand_values():
    # group [1, 0, 1]: mean 2/3, unbiased var 1/3; group of one: mean 0, std 1; all-equal group: 0
    a = compute_advantages("grpo", [1.0, 0.0, 1.0, 0.4, 0.5, 0.5], ["q", "q", "q", "s", "t", "t"], ["x"] * 6)
    s = math.sqrt(1 / 3)
    want = [(1 / 3) / (s + 1e-6), (-2 / 3) / (s + 1e-6), (1 / 3) / (s + 1e-6), 0.4 / (1 + 1e-6), 0.0, 0.0]
    assert a.tolist() == pytest.approx(want, abs=1e-6)


def test_dr_grpo_and_rloo_hand_values():
    r, g = [1.0, 0.0, 1.0, 0.0, 0.4], ["q", "q", "q", "q", "s"]
    assert compute_advantages("dr_grpo", r, g, ["x"] * 5).tolist() == pytest.approx([0.5, -0.5, 0.5, -0.5, 0.4])
    # leave-one-out: 1 - mean(0, 1, 0) = 2/3 ; 0 - mean(1, 1, 0) = -2/3 ; singleton keeps r
    assert compute_advantages("rloo", r, g, ["x"] * 5).tolist() == pytest.approx([2 / 3, -2 / 3, 2 / 3, -2 / 3, 0.4])


def test_rloo_matches_leave_one_out_loop():
    a = compute_advantages("rloo", REWARDS, GIDS, TIDS).tolist()
    want = []
    for i, (r, g) in enumerate(zip(REWARDS, GIDS, strict=True)):
        others = [REWARDS[j] for j in range(len(REWARDS)) if GIDS[j] == g and j != i]
        want.append(r - (sum(others) / len(others) if others else 0.0))
    assert a == pytest.approx(want, abs=1e-6)


def test_task_std_hand_values():
    # task x: rewards 1, 0, 1, 0 in groups [1, 0] and [1, 0]: task std = sqrt(1/3); centred by group mean 0.5
    # task y: a single response (std := 1), group of one (mean 0): A = r
    r = [1.0, 0.0, 1.0, 0.0, 0.6]
    a = compute_advantages("task_std", r, ["a", "a", "b", "b", "c"], ["x", "x", "x", "x", "y"])
    s = math.sqrt(1 / 3) + 1e-6
    assert a.tolist() == pytest.approx([0.5 / s, -0.5 / s, 0.5 / s, -0.5 / s, 0.6 / (1 + 1e-6)], abs=1e-6)
    # centring by the task mean instead (GoLongRL's qwenlong code): task x mean is also 0.5 here
    b = compute_advantages("task_std", [1.0, 1.0, 1.0, 0.0], ["a", "a", "b", "b"], ["x"] * 4, center="task")
    sd = statistics.stdev([1.0, 1.0, 1.0, 0.0]) + 1e-6
    assert b.tolist() == pytest.approx([0.25 / sd] * 3 + [-0.75 / sd], abs=1e-6)


def test_task_std_matches_loop():
    a = compute_advantages("task_std", REWARDS, GIDS, TIDS).tolist()
    groups = _groups(REWARDS, GIDS)
    want = []
    for r, g, t in zip(REWARDS, GIDS, TIDS, strict=True):
        task_vals = [x for x, tt in zip(REWARDS, TIDS, strict=True) if tt == t]
        sd = statistics.stdev(task_vals)
        want.append((r - _mu_var(groups[g])[0]) / (sd + 1e-6))
    assert a == pytest.approx(want, abs=1e-5)


def test_tmn_and_reweight_hand_values():
    # one task; groups A=[1,0] (mu .5, s2 .5), B=[1,1,1,0] (mu .75, s2 .25) -> sigma = sqrt(.375)
    r = [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    g = ["A", "A", "B", "B", "B", "B"]
    t = ["k"] * 6
    sig = math.sqrt(0.375) + 1e-6
    tmn = compute_advantages("tmn", r, g, t).tolist()
    assert tmn == pytest.approx([0.5 / sig, -0.5 / sig] + [0.25 / sig] * 3 + [-0.75 / sig], abs=1e-6)
    # mu_bar = .625; m_A = .525 -> p_A = 1/2 -> weights 1; m_B = .725 -> p_B = 3/4
    w = tmn_difficulty_weights(torch.tensor(r), g, t, alpha=0.8, gamma=1.0).tolist()
    assert w == pytest.approx([1, 1] + [math.exp(-0.25)] * 3 + [math.exp(0.25)], abs=1e-6)
    rw = compute_advantages("tmn_reweight", r, g, t).tolist()
    assert rw == pytest.approx([a * b for a, b in zip(tmn, w, strict=True)], abs=1e-6)


def test_tmn_singleton_group_uses_task_mean():
    # add a G=1 group C=[0.7]: mu_C = 0, s2_C = 1 -> sigma = sqrt(1.75/3); mu_bar = 1.25/3
    # m_C = mu_bar (0.4167) -> p_C = 1 ; 0.7 > mu_C = 0 -> weight exp(-0.5)
    r = [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.7]
    g = ["A", "A", "B", "B", "B", "B", "C"]
    a = compute_advantages("tmn_reweight", r, g, ["k"] * 7).tolist()
    sig = math.sqrt(1.75 / 3) + 1e-6
    assert a[6] == pytest.approx(0.7 / sig * math.exp(-0.5), abs=1e-6)
    # A: m_A = .8*.5 + .2*(1.25/3) = .4833 -> p = 1/2, weight 1
    assert a[0] == pytest.approx(0.5 / sig, abs=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(None, 1.0), (0.8, 1.0), (0.5, 2.0), (1.0, 0.7)])
def test_tmn_matches_loop_several_tasks(alpha, gamma):
    name = "tmn" if alpha is None else "tmn_reweight"
    params = {} if alpha is None else {"alpha": alpha, "gamma": gamma}
    a = compute_advantages(name, REWARDS, GIDS, TIDS, **params).tolist()
    assert a == pytest.approx(ref_tmn(REWARDS, GIDS, TIDS, alpha=alpha, gamma=gamma), abs=1e-5)


def test_group_estimators_match_loops():
    groups = _groups(REWARDS, GIDS)
    for name in ("grpo", "dr_grpo"):
        got = compute_advantages(name, REWARDS, GIDS, TIDS).tolist()
        want = []
        for r, g in zip(REWARDS, GIDS, strict=True):
            mu, var = _mu_var(groups[g])
            want.append((r - mu) / (math.sqrt(var) + 1e-6) if name == "grpo" else r - mu)
        assert got == pytest.approx(want, abs=1e-5), name


def test_all_equal_groups_give_zero_and_two_pass_variance_is_exact():
    # float32 one-pass E[x^2]-E[x]^2 leaves noise for near-constant groups; two-pass gives exactly 0
    r = torch.full((8,), 0.1, dtype=torch.float32)
    g = ["a"] * 4 + ["b"] * 4
    for name in ESTIMATORS:
        assert torch.count_nonzero(compute_advantages(name, r, g, ["k"] * 8)) == 0, name


def test_group_spanning_two_reward_types_is_an_error():
    with pytest.raises(ValueError, match="two reward types"):
        compute_advantages("tmn", [1.0, 0.0], ["a", "a"], ["x", "y"])
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        compute_advantages("nope", [1.0], ["a"], ["x"])


def test_dynamic_sampling_mask():
    m = dynamic_sampling_mask(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.3]), ["a", "a", "b", "b", "c", "c", "d"])
    assert m.tolist() == [False, False, True, True, False, False, False]


# ------------------------------------------------------------------ losses


def ref_ppo_token(lp, old, a, cl, ch, c):
    ratio = math.exp(lp - old)
    loss = max(-a * ratio, -a * min(max(ratio, 1 - cl), 1 + ch))
    if c is not None and a < 0:
        loss = min(loss, -c * a)
    return loss


def test_policy_loss_clip_higher_and_dual_clip_boundaries():
    ratios = [1.3, 1.25, 0.7, 0.85, 5.0, 1.0]
    adv = [1.0, 1.0, -1.0, -1.0, -1.0, 2.0]
    lp = torch.tensor([[math.log(x) for x in ratios]], requires_grad=True)
    old = torch.zeros(1, 6)
    mask = torch.ones(1, 6, dtype=torch.bool)
    loss_tok = []
    for j in range(6):
        one = torch.zeros(1, 6, dtype=torch.bool)
        one[0, j] = True
        loss_tok.append(policy_loss(lp, old, torch.tensor([adv]), one, dual_clip=3.0)[0].item())
    # A>0: ratio 1.3 clipped to 1.28; 1.25 kept. A<0: 0.7 clipped up to 0.8; 0.85 kept; 5.0 bounded by c=3
    assert loss_tok == pytest.approx([-1.28, -1.25, 0.8, 0.85, 3.0, -2.0], abs=1e-6)
    loss, m = policy_loss(lp, old, torch.tensor([adv]), mask, dual_clip=3.0)
    loss.backward()
    # clipped tokens (0: ratio above 1+eps_high with A>0; 2: below 1-eps_low with A<0; 4: dual clip) carry no gradient
    g = lp.grad[0].tolist()
    assert g[0] == 0 and g[2] == 0 and g[4] == 0
    assert g[1] == pytest.approx(-1.25 / 6) and g[5] == pytest.approx(-2.0 / 6)
    assert m["clip_frac"] == pytest.approx(2 / 6)
    assert m["dual_clip_frac"] == pytest.approx(1 / 6)
    # without dual clip the 5.0 ratio costs 5 |A|
    assert policy_loss(lp, old, torch.tensor([adv]), mask)[0].item() == pytest.approx((-1.28 - 1.25 + 0.8 + 0.85 + 5.0 - 2.0) / 6)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_policy_loss_aggregation_matches_loop(agg):
    gen = torch.Generator().manual_seed(0)
    B, T = 4, 7
    lp = torch.randn(B, T, generator=gen) * 0.3 - 2
    old = lp + torch.randn(B, T, generator=gen) * 0.3
    adv = torch.randn(B, generator=gen)
    lens = [7, 3, 1, 5]
    mask = torch.tensor([[t < n for t in range(T)] for n in lens])
    got, _ = policy_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0, agg=agg, norm_len=11)
    per_seq = [[ref_ppo_token(lp[b, t].item(), old[b, t].item(), adv[b].item(), 0.2, 0.28, 3.0) for t in range(n)]
               for b, n in enumerate(lens)]
    if agg == "token-mean":
        want = sum(sum(s) for s in per_seq) / sum(lens)
    elif agg == "seq-mean-token-mean":
        want = sum(sum(s) / len(s) for s in per_seq) / B
    else:
        want = sum(sum(s) / 11 for s in per_seq) / B
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_aggregate_total_splits_over_micro_batches():
    x = torch.arange(12.0).reshape(3, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    for mode, total in [("token-mean", 7), ("seq-mean-token-mean", 3), ("seq-mean-token-sum-norm", 3)]:
        whole = aggregate(x, mask, mode, norm_len=16)
        parts = (aggregate(x[:2], mask[:2], mode, total=total, norm_len=16)
                 + aggregate(x[2:], mask[2:], mode, total=total, norm_len=16))
        assert parts.item() == pytest.approx(whole.item())


def test_dr_grpo_constant_length_aggregation_hand_values():
    """Dr.GRPO: each response's token sum over the constant L, averaged over responses."""
    x = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)  # the last has no token
    assert aggregate(x, mask, "seq-mean-token-sum-norm", norm_len=8).item() == pytest.approx(((6 / 8) + (4 / 8)) / 2)
    # unlike seq-mean-token-mean, a token's weight does not depend on its response's length
    assert aggregate(x, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    with pytest.raises(ValueError, match="norm_len"):
        aggregate(x, mask, "seq-mean-token-sum-norm")


def test_rollout_is_token_weights_hand_values():
    old = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.4, 0.3, 0.1]]))
    sampler = torch.log(torch.tensor([[0.5, 0.01, 0.3], [0.8, 0.9, 0.1]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    # ratios 1, 20, 3 | 0.5, 1/3, (padding)
    w, m = rollout_is_weights(old, sampler, mask, level="token", clip=(0.5, 5.0))  # mode clip (GoLongRL)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 3.0], [0.5, 0.0, 0.0]]), rtol=1e-6, atol=1e-6)
    assert m["is_weight_mean"] == pytest.approx((1 + 0 + 3 + 0.5 + 0) / 5, rel=1e-6)
    assert m["is_clipped_frac"] == pytest.approx(2 / 5)  # 20 and 1/3 (0.5 itself is inside)
    assert m["is_vetoed_frac"] == 0.0
    w, m = rollout_is_weights(old, sampler, mask, level="token", clip=(0.5, 5.0), mode="truncate")
    torch.testing.assert_close(w, torch.tensor([[1.0, 5.0, 3.0], [0.5, 1 / 3, 0.0]]), rtol=1e-6, atol=1e-6)
    assert m["is_clipped_frac"] == pytest.approx(1 / 5)  # only 20 is capped; no lower bound
    with pytest.raises(ValueError, match="mode"):
        rollout_is_weights(old, sampler, mask, mode="mask")


def test_rollout_is_veto_zeroes_the_whole_response():
    old = torch.log(torch.tensor([[0.5, 1e-6, 0.9], [0.4, 0.3, 0.2]]))
    sampler = torch.log(torch.tensor([[0.5, 0.5, 0.3], [0.4, 0.3, 0.2]]))
    mask = torch.ones(2, 3, dtype=torch.bool)
    for mode in ("clip", "truncate"):
        w, m = rollout_is_weights(old, sampler, mask, level="token", clip=(0.5, 5.0), mode=mode, veto=1e-4)
        # response 0 holds a token with ratio 2e-6 < 1e-4: all its weights are 0; response 1 untouched
        torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), rtol=1e-6, atol=1e-6)
        assert m["is_vetoed_frac"] == pytest.approx(0.5) and m["is_weight_mean"] == pytest.approx(0.5)
    w2, _ = rollout_is_weights(old, sampler, mask, level="token", clip=(0.5, 5.0), veto=1e-7)
    assert w2[0, 0].item() == pytest.approx(1.0) and w2[0, 1].item() == 0.0  # no veto: only that token dropped
    assert w2[0, 2].item() == pytest.approx(3.0)


def test_rollout_is_sequence_weights_hand_values():
    old = torch.log(torch.tensor([[0.5, 0.6, 0.9], [0.4, 0.3, 0.7]]))
    sampler = torch.log(torch.tensor([[0.25, 0.3, 0.9], [0.8, 0.6, 0.1]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    w, m = rollout_is_weights(old, sampler, mask, level="sequence", clip=(0.5, 5.0))
    # products: 2 * 2 * 1 = 4 (inside) | 0.5 * 0.5 = 0.25 (padding ignored; outside: the response is dropped)
    torch.testing.assert_close(w, torch.tensor([[4.0, 4.0, 4.0], [0.0, 0.0, 0.0]]), rtol=1e-5, atol=1e-6)
    assert m["is_clipped_frac"] == pytest.approx(2 / 5)
    w, _ = rollout_is_weights(old, sampler, mask, level="sequence", clip=(0.5, 3.0), mode="truncate")
    torch.testing.assert_close(w, torch.tensor([[3.0, 3.0, 3.0], [0.25, 0.25, 0.0]]), rtol=1e-5, atol=1e-6)


def test_policy_loss_multiplies_each_token_term_by_its_weight():
    lp = torch.log(torch.tensor([[0.5, 0.2], [0.3, 0.6]]))
    old = lp + torch.tensor([[0.0, 0.5], [-0.1, 0.0]])
    adv = torch.tensor([1.0, -2.0])
    mask = torch.ones(2, 2, dtype=torch.bool)
    w = torch.tensor([[2.0, 0.5], [1.0, 0.0]])
    base, _ = policy_loss(lp, old, adv, mask, dual_clip=3.0, agg="token-mean")
    weighted, _ = policy_loss(lp, old, adv, mask, dual_clip=3.0, agg="token-mean", is_weights=w)
    terms = [[ref_ppo_token(lp[b, t].item(), old[b, t].item(), adv[b].item(), 0.2, 0.28, 3.0) for t in range(2)]
             for b in range(2)]
    assert base.item() == pytest.approx(sum(map(sum, terms)) / 4, abs=1e-6)
    assert weighted.item() == pytest.approx(sum(w[b, t].item() * terms[b][t] for b in range(2) for t in range(2)) / 4,
                                            abs=1e-6)


def test_kl_estimators_values():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    d = [0.5, -1.0, 0.0]
    assert kl_penalty(lp, ref, "k1").tolist() == pytest.approx(d)
    assert kl_penalty(lp, ref, "k2").tolist() == pytest.approx([x * x / 2 for x in d])
    assert kl_penalty(lp, ref, "k3").tolist() == pytest.approx([math.exp(-x) + x - 1 for x in d])
    # k3 is a non-negative, unbiased estimate: E_p[k3] = KL(p || ref) for two categorical distributions
    p = torch.tensor([0.2, 0.5, 0.3])
    q = torch.tensor([0.4, 0.4, 0.2])
    exact = float((p * (p / q).log()).sum())
    assert float((p * kl_penalty(p.log(), q.log(), "k3")).sum()) == pytest.approx(exact, abs=1e-6)
    assert float((p * kl_penalty(p.log(), q.log(), "k1")).sum()) == pytest.approx(exact, abs=1e-6)
    with pytest.raises(ValueError):
        kl_penalty(lp, ref, "k4")


def test_unknown_estimator_parameter_is_named():
    with pytest.raises(ValueError, match="no parameter 'beta'.*alpha, gamma, eps"):
        compute_advantages("tmn_reweight", [1.0, 0.0], ["a", "a"], ["x", "x"], beta=1.0)
