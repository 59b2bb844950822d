"""Advantage estimators and policy losses: small pure tensor functions, each registered by name.

Estimators (`register_estimator`, run by `compute_advantages`) map one scalar reward per response to
one scalar advantage per response. Policy losses (`register_policy_loss`, run by `compute_policy_loss`;
the learner calls the recipe's `algo.policy_loss`) share one signature, so the learner is loss-blind:

    loss(logp, old_logp, advantages, mask, *, agg, total, norm_len, is_weights, config) -> (loss, metrics)

logp / old_logp / mask [B, T], advantages [B] or [B, T]; agg, total and norm_len are `aggregate`'s;
is_weights [B, T] or None are rollout IS weights (`rollout_is_weights`, applied per token before
aggregation); config is the recipe's algo section, from which a loss reads its own parameters.

For estimators, every response carries the id of its prompt group (`group_ids`, the G samples of one
prompt) and its reward type (`reward_types`, the *mapped* reward type: EM, F1, ...; sub-tasks sharing a
reward scale pool together). The papers' "task k" of TMN is this reward type.

Conventions shared by all group estimators (the verl / GoLongRL ones):
- a group of size 1 has mean mu_q = 0 and variance s_q^2 = 1 (its advantage is its raw reward);
- variances are unbiased (Bessel) and computed in two passes in float64, so near-constant groups
  give exactly 0 rather than float32 cancellation noise;
- outputs are float32 (or the rewards' floating dtype) in the order of the inputs.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

Estimator = Callable[..., torch.Tensor]
ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Register an advantage estimator `fn(rewards, group_ids, reward_types, **params) -> advantages`."""

    def decorator(fn: Estimator) -> Estimator:
        if name in ESTIMATORS and ESTIMATORS[name] is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ESTIMATORS[name] = fn
        return fn

    return decorator


def compute_advantages(
    name: str,
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable],
    reward_types: Sequence[Hashable] | None = None,
    **params: Any,
) -> torch.Tensor:
    """Advantages [N] of N responses by the registered estimator `name`."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; choose one of {sorted(ESTIMATORS)}")
    r = torch.as_tensor(rewards)
    if not r.is_floating_point():
        r = r.float()
    if r.ndim != 1 or len(group_ids) != r.numel():
        raise ValueError(f"rewards must be 1-D with one group id each (got {tuple(r.shape)} and {len(group_ids)})")
    kinds = list(reward_types) if reward_types is not None else [""] * r.numel()
    if len(kinds) != r.numel():
        raise ValueError(f"need one reward type per reward (got {len(kinds)} for {r.numel()})")
    _reward_type_of_groups(group_ids, kinds)  # a group spanning two reward types is an error
    accepted = list(inspect.signature(ESTIMATORS[name]).parameters)[3:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"estimator {name!r} takes no parameter {unknown[0]!r} (it takes: {', '.join(accepted) or 'none'})")
    return ESTIMATORS[name](r, list(group_ids), kinds, **params).to(r.dtype)


# ---------------------------------------------------------------- group statistics


def _index(ids: Sequence[Hashable]) -> tuple[torch.Tensor, int]:
    """Dense integer ids 0..n-1 in order of first appearance."""
    seen: dict[Hashable, int] = {}
    idx = [seen.setdefault(i, len(seen)) for i in ids]
    return torch.tensor(idx, dtype=torch.long), len(seen)


def _reward_type_of_groups(group_ids: Sequence[Hashable], reward_types: Sequence[Hashable]) -> tuple[list, list]:
    """(the groups, the reward type of each group); a group must not span two reward types."""
    kind_of: dict[Hashable, Hashable] = {}
    for g, t in zip(group_ids, reward_types, strict=True):
        if kind_of.setdefault(g, t) != t:
            raise ValueError(f"group {g!r} has responses of two reward types ({kind_of[g]!r}, {t!r})")
    return list(kind_of), list(kind_of.values())


def group_stats(r: torch.Tensor, group_ids: Sequence[Hashable]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group (index [N], count [Gn], mean mu_q [Gn], unbiased var s_q^2 [Gn]) in float64.

    mu_q = mean_i r_qi; s_q^2 = sum_i (r_qi - mu_q)^2 / (n_q - 1) (two passes); n_q = 1: mu_q = 0, s_q^2 = 1.
    """
    idx, n = _index(group_ids)
    x = r.detach().double().cpu()
    count = torch.zeros(n, dtype=torch.float64).index_add_(0, idx, torch.ones_like(x))
    mean = torch.zeros(n, dtype=torch.float64).index_add_(0, idx, x) / count
    sq = torch.zeros(n, dtype=torch.float64).index_add_(0, idx, (x - mean[idx]) ** 2)
    var = sq / (count - 1).clamp_min(1)
    single = count <= 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    var = torch.where(single, torch.ones_like(var), var)
    return idx, count, mean, var


def _out(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.to(device=like.device, dtype=like.dtype)


# ---------------------------------------------------------------- estimators


@register_estimator("grpo")
def grpo(r: torch.Tensor, group_ids: Sequence[Hashable], reward_types: Sequence[Hashable], eps: float = 1e-6) -> torch.Tensor:
    """GRPO: A_qi = (r_qi - mu_q) / (s_q + eps), s_q the unbiased std of prompt q's group (G=1: A = r / (1 + eps))."""
    idx, _, mean, var = group_stats(r, group_ids)
    a = (r.detach().double().cpu() - mean[idx]) / (var.sqrt()[idx] + eps)
    return _out(a, r)


@register_estimator("dr_grpo")
def dr_grpo(r: torch.Tensor, group_ids: Sequence[Hashable], reward_types: Sequence[Hashable]) -> torch.Tensor:
    """Dr.GRPO: A_qi = r_qi - mu_q (no std division; G=1: A = r)."""
    idx, _, mean, _ = group_stats(r, group_ids)
    return _out(r.detach().double().cpu() - mean[idx], r)


@register_estimator("rloo")
def rloo(r: torch.Tensor, group_ids: Sequence[Hashable], reward_types: Sequence[Hashable]) -> torch.Tensor:
    """RLOO: A_qi = r_qi - mean_{j != i} r_qj = G/(G-1) (r_qi - mu_q)  (G=1: A = r, no baseline)."""
    idx, count, mean, _ = group_stats(r, group_ids)
    g = count[idx]
    scale = torch.where(g > 1, g / (g - 1).clamp_min(1), torch.ones_like(g))
    return _out(scale * (r.detach().double().cpu() - mean[idx]), r)


@register_estimator("task_std")
def task_std(
    r: torch.Tensor,
    group_ids: Sequence[Hashable],
    reward_types: Sequence[Hashable],
    eps: float = 1e-6,
    center: str = "group",
) -> torch.Tensor:
    """QwenLong-L1.5 task-level std: A_qi = (r_qi - mu_q) / (sigma_k + eps), k the reward type of q.

    sigma_k = unbiased std of *all* rewards of reward type k in the batch; 1 if k has a single
    response or no spread at all (then every group of size > 1 is 0 anyway, and a G=1 group keeps
    A = r as in `grpo`, instead of r / eps). center="group" subtracts the prompt's group mean mu_q (G=1: mu_q = 0), as the paper
    describes; center="task" subtracts the batch mean of reward type k instead, as GoLongRL's
    `qwenlong_grpo` code does (the estimator's and the option's names are the paper's).
    """
    x = r.detach().double().cpu()
    tidx, tcount, tmean, tvar = group_stats(r, reward_types)
    if center == "group":
        gidx, _, gmean, _ = group_stats(r, group_ids)
        centered = x - gmean[gidx]
    elif center == "task":
        raw_mean = torch.zeros_like(tmean).index_add_(0, tidx, x) / tcount
        centered = x - raw_mean[tidx]
    else:
        raise ValueError(f"task_std center must be 'group' or 'task' (got {center!r})")
    tvar = torch.where(tvar > 0, tvar, torch.ones_like(tvar))
    return _out(centered / (tvar.sqrt()[tidx] + eps), r)


def _tmn_parts(r: torch.Tensor, group_ids: Sequence[Hashable], reward_types: Sequence[Hashable]):
    """Shared TMN pieces: per-response group index, per-group count/mean/var, per-group reward-type index."""
    gidx, count, mean, var = group_stats(r, group_ids)
    _, group_kinds = _reward_type_of_groups(group_ids, reward_types)
    tidx, nt = _index(group_kinds)  # reward-type index of each group
    groups_per_kind = torch.zeros(nt, dtype=torch.float64).index_add_(0, tidx, torch.ones_like(mean))
    sigma = (torch.zeros(nt, dtype=torch.float64).index_add_(0, tidx, var) / groups_per_kind).sqrt()
    mu_bar = torch.zeros(nt, dtype=torch.float64).index_add_(0, tidx, mean) / groups_per_kind
    return gidx, count, mean, tidx, sigma, mu_bar


@register_estimator("tmn")
def tmn(r: torch.Tensor, group_ids: Sequence[Hashable], reward_types: Sequence[Hashable], eps: float = 1e-6) -> torch.Tensor:
    """Task-level multi-task normalisation (GoLongRL TMN; its "task" k is the reward type).

    A_qi = (r_qi - mu_q) / (sigma_k + eps),  sigma_k = sqrt(mean_{q in Q_k} s_q^2),
    Q_k the prompts of reward type k in the batch; G=1 groups count with mu_q = 0, s_q^2 = 1.
    """
    gidx, _, mean, tidx, sigma, _ = _tmn_parts(r, group_ids, reward_types)
    x = r.detach().double().cpu()
    return _out((x - mean[gidx]) / (sigma[tidx][gidx] + eps), r)


def tmn_difficulty_weights(
    r: torch.Tensor,
    group_ids: Sequence[Hashable],
    reward_types: Sequence[Hashable],
    alpha: float = 0.8,
    gamma: float = 1.0,
) -> torch.Tensor:
    """Per-response difficulty weight of TMN-Reweight.

    mu_bar_k = mean_{q in Q_k} mu_q;  m_q = alpha mu_q + (1 - alpha) mu_bar_k  (G=1: m_q = mu_bar_k);
    p_q = fraction of q's responses with r > m_q (strict);
    w_qi = exp(gamma (0.5 - p_q)) if r_qi > mu_q else exp(gamma (p_q - 0.5)).
    """
    gidx, count, mean, tidx, _, mu_bar = _tmn_parts(r, group_ids, reward_types)
    x = r.detach().double().cpu()
    smoothed = torch.where(count <= 1, mu_bar[tidx], alpha * mean + (1 - alpha) * mu_bar[tidx])
    above = (x > smoothed[gidx]).double()
    p = torch.zeros_like(mean).index_add_(0, gidx, above) / count
    pos = x > mean[gidx]
    w = torch.where(pos, torch.exp(gamma * (0.5 - p[gidx])), torch.exp(gamma * (p[gidx] - 0.5)))
    return _out(w, r)


@register_estimator("tmn_reweight")
def tmn_reweight(
    r: torch.Tensor,
    group_ids: Sequence[Hashable],
    reward_types: Sequence[Hashable],
    alpha: float = 0.8,
    gamma: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """TMN-Reweight: A_qi = tmn(r)_qi * w_qi (see `tmn` and `tmn_difficulty_weights`; no clipping)."""
    a = tmn(r, group_ids, reward_types, eps=eps).double()
    w = tmn_difficulty_weights(r, group_ids, reward_types, alpha=alpha, gamma=gamma).double()
    return _out(a * w, r)


def dynamic_sampling_mask(rewards: torch.Tensor | Sequence[float], group_ids: Sequence[Hashable]) -> torch.Tensor:
    """True for responses whose group's rewards are not all equal (DAPO dynamic sampling keeps these).

    A group of size 1 has no spread and is dropped.
    """
    r = torch.as_tensor(rewards).detach().double().cpu()
    idx, n = _index(group_ids)
    lo = torch.full((n,), math.inf, dtype=torch.float64).scatter_reduce(0, idx, r, "amin")
    hi = torch.full((n,), -math.inf, dtype=torch.float64).scatter_reduce(0, idx, r, "amax")
    return (hi > lo)[idx]


# ---------------------------------------------------------------- losses


def aggregate(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    total: float | None = None,
    norm_len: int | None = None,
) -> torch.Tensor:
    """Reduce per-token values [B, T] under `mask` to a scalar.

    token-mean:              sum_{b,t} m l / sum_{b,t} m
    seq-mean-token-mean:     (1/B) sum_b (sum_t m l / sum_t m)
    seq-mean-token-sum-norm: (1/B) sum_b sum_t m l / L   (Dr.GRPO: L = `norm_len`, a constant such as the
                             response limit, so a token's weight does not depend on its response's length)
    B counts sequences with at least one token. `total` replaces the denominator (all tokens, or all
    sequences, of the whole batch) so that micro-batch losses add up to the batch aggregate under
    gradient accumulation.
    """
    m = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        denom = m.sum() if total is None else torch.as_tensor(total, dtype=loss_mat.dtype)
        return (loss_mat * m).sum() / denom.clamp_min(1)
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum-norm"):
        per_seq = (loss_mat * m).sum(-1)
        if mode == "seq-mean-token-mean":
            per_seq = per_seq / m.sum(-1).clamp_min(1)
        if mode == "seq-mean-token-sum-norm":
            if not norm_len:
                raise ValueError("loss aggregation seq-mean-token-sum-norm needs norm_len (the constant length)")
            per_seq = per_seq / norm_len
        has_tokens = (m.sum(-1) > 0).to(loss_mat.dtype)
        denom = has_tokens.sum() if total is None else torch.as_tensor(total, dtype=loss_mat.dtype)
        return (per_seq * has_tokens).sum() / denom.clamp_min(1)
    raise ValueError(f"unknown loss aggregation {mode!r}; use token-mean, seq-mean-token-mean or seq-mean-token-sum-norm")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.to(x.dtype)
    return float((x * m).sum() / m.sum().clamp_min(1))


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    total: float | None = None,
    norm_len: int | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate with clip-higher and optional dual clip, per token [B, T].

    rho = exp(logp - logp_old) (log-ratio clamped to [-20, 20]);
    l = max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high));
    dual clip (c > 1, only where A < 0): l = min(l, -c A), so a negative advantage's loss is at most c |A|;
    rollout correction: l = w l with `is_weights` w [B, T] (see `rollout_is_weights`; no gradient through w).
    `advantages` is [B] (one per sequence) or [B, T]. Returns (aggregate(l), metrics).
    """
    if advantages.ndim == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logprobs)
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(loss1, loss2)
    metrics = {
        "clip_frac": _masked_mean((loss2 > loss1).float(), mask),
        "approx_kl": _masked_mean(-log_ratio.detach(), mask),
        "ratio_mean": _masked_mean(ratio.detach(), mask),
    }
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (got {dual_clip})")
        bound = -advantages * dual_clip
        neg = advantages < 0
        metrics["dual_clip_frac"] = _masked_mean(((clipped > bound) & neg).float(), mask)
        clipped = torch.where(neg, torch.minimum(clipped, bound), clipped)
    if is_weights is not None:
        clipped = clipped * is_weights.detach()
    return aggregate(clipped, mask, agg, total=total, norm_len=norm_len), metrics


PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, float]]]
POLICY_LOSSES: dict[str, PolicyLoss] = {}
_LOSS_ARGS = ["logp", "old_logp", "advantages", "mask"]
_LOSS_KEYWORDS = ["agg", "total", "norm_len", "is_weights", "config"]


def register_policy_loss(name: str) -> Callable[[PolicyLoss], PolicyLoss]:
    """Register a policy loss `fn(logp, old_logp, advantages, mask, *, agg, total, norm_len, is_weights,
    config) -> (loss, metrics)`; a function of any other signature is refused here, at import."""

    def decorator(fn: PolicyLoss) -> PolicyLoss:
        if name in POLICY_LOSSES and POLICY_LOSSES[name] is not fn:
            raise ValueError(f"policy loss {name!r} is already registered")
        params = inspect.signature(fn).parameters.values()
        args = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        keywords = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
        if args != _LOSS_ARGS or keywords != _LOSS_KEYWORDS:
            raise TypeError(f"policy loss {name!r} must take ({', '.join(_LOSS_ARGS)}, *, {', '.join(_LOSS_KEYWORDS)}); "
                            f"{fn.__name__} takes ({', '.join(args)}, *, {', '.join(keywords)})")
        POLICY_LOSSES[name] = fn
        return fn

    return decorator


def check_policy_loss(name: str) -> None:
    """Raise a one-line ValueError unless `name` is a registered policy loss."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; choose one of {sorted(POLICY_LOSSES)} (algo.policy_loss)")


def compute_policy_loss(
    name: str,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    agg: str,
    total: float | None,
    norm_len: int | None,
    is_weights: torch.Tensor | None,
    config: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(aggregated loss, metrics) of the registered policy loss `name`."""
    check_policy_loss(name)
    if logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"logp, old_logp and mask must have one shape (got {tuple(logp.shape)}, "
                         f"{tuple(old_logp.shape)}, {tuple(mask.shape)})")
    return POLICY_LOSSES[name](logp, old_logp, advantages, mask, agg=agg, total=total, norm_len=norm_len,
                               is_weights=is_weights, config=config)


@register_policy_loss("ppo_clip")
def ppo_clip(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    agg: str,
    total: float | None,
    norm_len: int | None,
    is_weights: torch.Tensor | None,
    config: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`policy_loss` (PPO clip-higher, optional dual clip) with config.clip_low, .clip_high and .dual_clip."""
    return policy_loss(logp, old_logp, advantages, mask, clip_low=config.clip_low, clip_high=config.clip_high,
                       dual_clip=config.dual_clip, agg=agg, total=total, norm_len=norm_len, is_weights=is_weights)


def rollout_is_weights(
    old_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    level: str = "token",
    clip: tuple[float, float] = (0.5, 5.0),
    mode: str = "clip",
    veto: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Importance weights [B, T] correcting the sampler/learner mismatch (rollout IS).

    The responses were sampled by the rollout engine (pi_s, e.g. a bf16 vLLM) but the gradient is
    taken for the learner's pi_old; each token's policy-gradient term is weighted by w_t, from
        token:    rho_t = exp(logp_old_t - logp_s_t)
        sequence: rho_t = exp(sum_u m_u (logp_old_u - logp_s_u))   (the same for every t of a response)
    (log-ratios clamped to [-20, 20]) and the band [low, high] = `clip`:
        mode clip:     w_t = rho_t if low <= rho_t <= high else 0   (a token outside the band is dropped
                       from the gradient but stays in the loss's denominator; GoLongRL's setting)
        mode truncate: w_t = min(rho_t, high)                         (TIS; low unused)
    and, with a veto v, w_t = 0 for every token of a response holding a token with
    exp(logp_old_u - logp_s_u) < v (a token the learner all but rules out).
    Metrics, over response tokens: is_weight_mean = mean w; is_clipped_frac = share with rho outside
    [low, high] (clip) or above high (truncate); is_vetoed_frac = share of tokens in vetoed responses.
    """
    low, high = clip
    m = mask.to(old_logprobs.dtype)
    log_ratio = (old_logprobs - sampler_logprobs).detach() * m
    if level == "token":
        log_rho = log_ratio
    elif level == "sequence":
        log_rho = log_ratio.sum(-1, keepdim=True).expand_as(log_ratio)
    else:
        raise ValueError(f"unknown rollout IS level {level!r}; use token or sequence")
    rho = torch.exp(log_rho.clamp(-20.0, 20.0))
    if mode == "clip":
        outside = (rho < low) | (rho > high)
        weights = torch.where(outside, torch.zeros_like(rho), rho)
    elif mode == "truncate":
        outside = rho > high
        weights = rho.clamp(max=high)
    else:
        raise ValueError(f"unknown rollout IS mode {mode!r}; use clip or truncate")
    vetoed = torch.zeros_like(m, dtype=torch.bool)
    if veto is not None:
        vetoed = ((log_ratio < math.log(veto)) & mask.bool()).any(-1, keepdim=True).expand_as(vetoed)
        weights = torch.where(vetoed, torch.zeros_like(weights), weights)
    metrics = {
        "is_weight_mean": _masked_mean(weights, mask),
        "is_clipped_frac": _masked_mean(outside.to(m.dtype), mask),
        "is_vetoed_frac": _masked_mean(vetoed.to(m.dtype), mask),
    }
    return weights * m, metrics


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate from samples of pi, with d = logp - logp_ref.

    k1 = d;  k2 = d^2 / 2;  k3 = exp(-d) - (-d) - 1 = exp(ref - logp) - (ref - logp) - 1  (>= 0, unbiased).
    k3 is clamped to [-10, 10] as a guard against exploding ratios.
    """
    d = logprobs - ref_logprobs
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d.square()
    if kind == "k3":
        neg = (-d).clamp(-20.0, 20.0)
        return (torch.exp(neg) - neg - 1).clamp(-10.0, 10.0)
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")
