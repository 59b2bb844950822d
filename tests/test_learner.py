"""The Learner on a tiny random model: learning direction, exact gradient accumulation, LoRA, checkpoints."""

from __future__ import annotations

import pytest
import torch

from golong.config import AlgoConfig, LoraConfig, ModelConfig, OptimConfig
from golong.learner import Learner, Sample


def _samples(seed: int = 0, n: int = 5, vocab: int = 500) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = torch.randint(5, vocab, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(5, vocab, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g).tolist()
        out.append(Sample(p, r, advantage=float(torch.randn(1, generator=g)), reward_type=f"t{i % 2}"))
    return out


def _learner(path, *, mb=4096, lr=1e-3, seed=0, lora=None, **algo) -> Learner:
    return Learner(
        ModelConfig(path=str(path), lora=lora),
        OptimConfig(lr=lr, micro_batch_tokens=mb, logprob_chunk=5, weight_decay=0.0),
        AlgoConfig(**{"dual_clip": 3.0, **algo}),
        seed=seed,
        device="cpu",
    )


def _params(learner: Learner) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in learner.model.parameters()])


def test_positive_advantage_increases_logprob(tiny_model_dir):
    learner = _learner(tiny_model_dir, lr=3e-3)
    s = Sample(prompt_ids=[10, 11, 12, 13], response_ids=[20, 21, 22, 23, 24], advantage=1.0)
    before = learner.compute_logprobs([s])[0].sum().item()
    for _ in range(3):
        m = learner.train_step([s])
    after = learner.compute_logprobs([s])[0].sum().item()
    assert after > before + 0.5
    assert m["clip_frac"] == 0.0 and m["approx_kl"] == 0.0  # on-policy: ratio 1 at the only pass
    assert m["pg_loss"] == pytest.approx(-1.0)  # token-mean of -A * ratio
    for key in ("loss", "kl", "entropy", "grad_norm", "lr", "tokens", "tokens_per_s", "learner_time_s"):
        assert key in m


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_gradient_accumulation_equals_one_big_batch(tiny_model_dir, agg):
    samples = _samples()
    small = _learner(tiny_model_dir, mb=16, loss_agg=agg, loss_norm_tokens=16)  # forces several micro-batches
    big = _learner(tiny_model_dir, mb=100_000, loss_agg=agg, loss_norm_tokens=16)
    assert len(small._rows(samples)) > 2 and len(big._rows(samples)) == 1
    grads = {}
    for name, learner in (("small", small), ("big", big)):
        # the gradient the optimizer sees (after accumulation and clipping), recorded right before its step
        learner.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs, name=name: grads.__setitem__(
                name, torch.cat([p.grad.flatten() for grp in opt.param_groups for p in grp["params"]]).clone()
            )
        )
    ms, mb = small.train_step(samples), big.train_step(samples)
    for k in ("loss", "pg_loss", "grad_norm", "entropy"):
        assert ms[k] == pytest.approx(mb[k], rel=1e-4, abs=1e-6), k
    torch.testing.assert_close(grads["small"], grads["big"], atol=1e-7, rtol=1e-4)
    # Adam's first step is ~ lr * sign(g), so parameters agree to well under one lr
    torch.testing.assert_close(_params(small), _params(big), atol=1e-4, rtol=0)


def test_grad_norm_matches_autograd_of_the_batch_loss(tiny_model_dir):
    """The accumulated gradient is the gradient of -(1/N) sum_tokens A * logp (on-policy token-mean)."""
    samples = _samples(seed=3)
    learner = _learner(tiny_model_dir, mb=20)
    ref = _learner(tiny_model_dir)
    # the plain computation: every sequence through the full model on its own
    total = sum(len(s.response_ids) for s in samples)
    loss = 0.0
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        lp = torch.log_softmax(ref.model(input_ids=ids).logits[0], -1)
        pos = torch.arange(len(s.prompt_ids) - 1, len(ids[0]) - 1)
        loss = loss - s.advantage * lp[pos, torch.tensor(s.response_ids)].sum() / total
    loss.backward()
    want = torch.sqrt(sum((p.grad**2).sum() for p in ref.model.parameters() if p.grad is not None)).item()
    assert learner.train_step(samples)["grad_norm"] == pytest.approx(want, rel=1e-4)


def test_several_updates_per_batch_use_fixed_old_logprobs(tiny_model_dir):
    """Pass 1 is the on-policy step (ratio 1); pass 2 sees pi_after_pass_1 / pi_old with pi_old fixed
    before pass 1, so its mean ratio is computed here from the on-policy learner's weights after its step."""
    samples = _samples(seed=1)
    one = _learner(tiny_model_dir, lr=1e-2)  # after its step: the weights of `two` after its first pass
    two = _learner(tiny_model_dir, lr=1e-2, updates_per_batch=2, clip_low=0.05, clip_high=0.05)
    before = torch.cat(one.compute_logprobs(samples))
    one.train_step(samples)
    after = torch.cat(one.compute_logprobs(samples))
    m = two.train_step(samples)
    assert m["optimizer_steps"] == 2
    # metrics average both passes: pass 1 contributes ratio 1 and clip fraction 0
    assert m["ratio_mean"] == pytest.approx((1 + torch.exp(after - before).mean().item()) / 2, rel=1e-5)
    ratio = torch.exp(after - before)
    assert m["clip_frac"] > 0  # pass 2 is off-policy enough to clip
    assert (_params(two) - _params(one)).abs().max() > 1e-4
    assert ((ratio - 1).abs() > 0.05).any()


def test_mini_batches_split_each_pass_into_optimizer_steps(tiny_model_dir):
    samples = _samples(seed=6, n=6)
    split = _learner(tiny_model_dir, lr=1e-2, mini_batches=2, clip_low=0.05, clip_high=0.05)
    first_half = _learner(tiny_model_dir, lr=1e-2)
    grads = {}
    for name, learner in (("split", split), ("half", first_half)):
        def first_step(opt, args, kwargs, name=name):
            grads.setdefault(name, torch.cat([p.grad.flatten() for grp in opt.param_groups for p in grp["params"]]))

        learner.optimizer.register_step_pre_hook(first_step)
    m = split.train_step(samples)
    first_half.train_step(samples[:3])
    assert m["optimizer_steps"] == 2
    # the first step is the first mini-batch's own on-policy step (its loss normalised by its own tokens)
    torch.testing.assert_close(grads["split"], grads["half"], atol=1e-7, rtol=1e-5)
    assert m["clip_frac"] > 0  # the second mini-batch is scored against log-probs fixed before the first step


def test_lora_dropout_does_not_perturb_the_first_ratio(tiny_model_dir):
    """Old log-probs and updates run with dropout off: with a negligible lr every ratio is exactly 1."""
    learner = _learner(tiny_model_dir, lr=1e-30, lora=LoraConfig(r=4, alpha=8, dropout=0.3),
                       updates_per_batch=2, mini_batches=2)
    with torch.no_grad():  # a non-zero B, so the adapter (and its dropout) changes the output
        for n, p in learner.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    m = learner.train_step(_samples(seed=7))
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and m["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["clip_frac"] == 0.0


def test_kl_to_reference_starts_at_zero_then_grows(tiny_model_dir):
    learner = _learner(tiny_model_dir, lr=1e-2, kl_coef=0.1)
    samples = _samples(seed=2)
    assert learner.train_step(samples)["kl"] == pytest.approx(0.0, abs=1e-7)
    assert learner.train_step(samples)["kl"] > 1e-6


def test_drift_is_zero_when_sampler_matches(tiny_model_dir):
    learner = _learner(tiny_model_dir)
    samples = _samples(seed=4)
    for s, lp in zip(samples, learner.compute_logprobs(samples), strict=True):
        s.sampler_logprobs = lp.tolist()
    m = learner.train_step(samples)
    assert m["drift"] == pytest.approx(0.0, abs=1e-5) and m["drift_kl"] == pytest.approx(0.0, abs=1e-6)
    samples[0].sampler_logprobs = [x - 0.5 for x in samples[0].sampler_logprobs]  # now off by 0.5 nats
    assert learner.train_step(samples)["drift"] > 0.0


def test_lora_trains_only_adapters_and_syncs_merged_weights(tiny_model_dir):
    learner = _learner(tiny_model_dir, lr=1e-2, lora=LoraConfig(r=4, alpha=8), kl_coef=0.1)
    trainable = {n for n, p in learner.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in learner.model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    # the reference is the base model with the adapter off: equal to the policy until B (zero-init) moves
    assert learner.train_step(_samples())["kl"] == pytest.approx(0.0, abs=1e-7)
    assert learner.train_step(_samples())["kl"] > 1e-7
    for n, p in learner.model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
    assert any(not torch.equal(p, lora_before[n]) for n, p in learner.model.named_parameters() if n in lora_before)
    # merged weights under the base model's names equal peft's own merge
    synced = learner.state_dict_for_sync()
    from transformers import AutoModelForCausalLM

    base_names = set(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict())
    assert set(synced) == base_names
    import copy

    merged = copy.deepcopy(learner.model).merge_and_unload().state_dict()
    for k, v in merged.items():
        torch.testing.assert_close(synced[k], v, atol=1e-6, rtol=0)


def test_save_load_round_trip_gives_identical_next_step(tiny_model_dir, tmp_path):
    a = _learner(tiny_model_dir, lr=1e-2)
    a.train_step(_samples(seed=5))
    a.save(tmp_path / "ckpt")
    a.save(tmp_path / "ckpt")  # overwriting an existing checkpoint is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    next_a = a.train_step(_samples(seed=6))
    b = _learner(tiny_model_dir, lr=1e-2, seed=123)
    b.load(tmp_path / "ckpt")
    next_b = b.train_step(_samples(seed=6))
    assert b.step == a.step == 2
    for k in ("loss", "grad_norm", "lr", "entropy"):
        assert next_b[k] == pytest.approx(next_a[k], rel=1e-6), k
    torch.testing.assert_close(_params(a), _params(b), atol=0, rtol=0)
    # the saved model folder is a normal HF model with its tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt" / "model")
    assert AutoTokenizer.from_pretrained(tmp_path / "ckpt" / "model").eos_token == "<|im_end|>"


def test_lora_save_load_round_trip(tiny_model_dir, tmp_path):
    lora = LoraConfig(r=4, alpha=8)
    a = _learner(tiny_model_dir, lr=1e-2, lora=lora)
    a.train_step(_samples(seed=7))
    a.save(tmp_path / "lora")
    next_a = a.train_step(_samples(seed=8))
    b = _learner(tiny_model_dir, lr=1e-2, lora=lora, seed=9)
    b.load(tmp_path / "lora")
    assert b.train_step(_samples(seed=8))["grad_norm"] == pytest.approx(next_a["grad_norm"], rel=1e-6)
    torch.testing.assert_close(_params(a), _params(b), atol=0, rtol=0)


def test_warmup_schedule(tiny_model_dir):
    learner = Learner(
        ModelConfig(path=str(tiny_model_dir)), OptimConfig(lr=1e-3, warmup_steps=4), AlgoConfig(),
        device="cpu",
    )
    lrs = [learner.train_step(_samples(n=2))["lr"] for _ in range(5)]
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_bf16_keeps_fp32_master_weights(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir), dtype="bfloat16")
    mixed = Learner(cfg, OptimConfig(lr=1e-6), AlgoConfig(), device="cpu")
    pure = Learner(cfg, OptimConfig(lr=1e-6, fp32_master_weights=False), AlgoConfig(), device="cpu")
    assert next(mixed.model.parameters()).dtype == torch.float32
    assert next(pure.model.parameters()).dtype == torch.bfloat16
    assert all(v.dtype == torch.bfloat16 for v in mixed.state_dict_for_sync().values() if v.is_floating_point())
    before_m, before_p = _params(mixed), _params(pure).float()
    samples = _samples(seed=11)
    mixed.train_step(samples)
    pure.train_step(samples)
    # an lr-1e-6 Adam step moves fp32 weights by ~1e-6 but is below the bf16 spacing of most weights
    moved_m = ((_params(mixed) - before_m).abs() > 0).float().mean().item()
    moved_p = ((_params(pure).float() - before_p).abs() > 0).float().mean().item()
    assert moved_m > 0.5 and moved_p < 0.2


def _optimizer_gradient(learner: Learner, samples: list[Sample]) -> torch.Tensor:
    """The gradient the optimizer steps with (float64 copy), recorded by a pre-step hook."""
    seen: list[torch.Tensor] = []

    def record(opt, args, kwargs):
        seen.append(torch.cat([p.grad.double().flatten() for grp in opt.param_groups for p in grp["params"]]))

    learner.optimizer.register_step_pre_hook(record)
    learner.train_step(samples)
    return seen[0]


@pytest.mark.parametrize("precision", [{"master_weights": "optimizer"}, {"fp32_master_weights": False}])
def test_bf16_gradient_accumulation_error_does_not_grow_with_micro_batches(tiny_model_dir, precision):
    """Against a float64 autograd of the batch loss on the same (bf16) weights: the relative error of
    one micro-batch (the bf16 forward's own) stays put at ~85 micro-batches. Summing bf16 gradients
    grew it from 0.82% to 1.27% here."""
    from transformers import AutoModelForCausalLM

    samples = _samples(seed=3, n=128)

    def bf16_learner(mb: int) -> Learner:
        optim = OptimConfig(lr=1e-6, micro_batch_tokens=mb, grad_clip=1e9, share_prompts=False, **precision)
        return Learner(ModelConfig(path=str(tiny_model_dir), dtype="bfloat16"), optim, AlgoConfig(), device="cpu")

    one, many = bf16_learner(100_000), bf16_learner(20)
    assert len(one._rows(samples)) == 1 and len(many._rows(samples)) > 80
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    ref.load_state_dict({k: v.double() for k, v in one.model.state_dict().items()})
    total = sum(len(s.response_ids) for s in samples)
    loss = 0.0
    for s in samples:  # on-policy token-mean: -(1/N) sum_tokens A log p
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        lp = torch.log_softmax(ref(input_ids=ids).logits[0], -1)
        pos = torch.arange(len(s.prompt_ids) - 1, ids.shape[1] - 1)
        loss = loss - s.advantage * lp[pos, torch.tensor(s.response_ids)].sum() / total
    loss.backward()
    want = torch.cat([p.grad.flatten() for p in ref.parameters() if p.grad is not None])
    errors = [float((_optimizer_gradient(lrn, samples) - want).norm() / want.norm()) for lrn in (one, many)]
    assert errors[1] < 1.05 * errors[0], errors


def test_step0_kl_is_exactly_zero_with_a_bf16_policy_over_fp32_weights(tiny_model_dir):
    """The reference runs under the same autocast as the policy (float32 weights, bf16 matmuls)."""
    learner = Learner(ModelConfig(path=str(tiny_model_dir), dtype="bfloat16"), OptimConfig(lr=1e-3),
                      AlgoConfig(kl_coef=0.1), device="cpu")
    assert learner.autocast
    assert learner.train_step(_samples(seed=2))["kl"] == 0.0
    assert learner.train_step(_samples(seed=2))["kl"] > 0.0


def _with_sampler(learner: Learner, samples: list[Sample], shift: float) -> list[Sample]:
    """The samples with sampler log-probs = the learner's own minus `shift` (every ratio = exp(shift))."""
    import copy

    out = copy.deepcopy(samples)
    for s, lp in zip(out, learner.compute_logprobs(out), strict=True):
        s.sampler_logprobs = (lp - shift).tolist()
    return out


def test_rollout_is_weights_scale_the_gradient_and_veto_drops_a_response(tiny_model_dir):
    import math

    samples = _samples(seed=8)
    plain = _learner(tiny_model_dir).train_step(_with_sampler(_learner(tiny_model_dir), samples, 0.0))
    kw = {"rollout_is": "token", "rollout_is_clip": (0.5, 5.0)}
    # every ratio 2 (inside the band): the whole gradient doubles; ratio 10: truncated to 5, or (clip,
    # GoLongRL's mode) every token dropped: no gradient at all
    for mode, shift, scale, clipped in (("clip", math.log(2.0), 2.0, 0.0), ("truncate", math.log(10.0), 5.0, 1.0),
                                        ("clip", math.log(10.0), 0.0, 1.0)):
        learner = _learner(tiny_model_dir, rollout_is_mode=mode, **kw)
        m = learner.train_step(_with_sampler(learner, samples, shift))
        assert m["grad_norm"] == pytest.approx(scale * plain["grad_norm"], rel=1e-4, abs=1e-9)
        assert m["is_weight_mean"] == pytest.approx(scale, rel=1e-5) and m["is_clipped_frac"] == pytest.approx(clipped)
    # a token the learner all but rules out vetoes its whole response: the gradient is the rest's
    learner = _learner(tiny_model_dir, rollout_is_veto=1e-4, **kw)
    shifted = _with_sampler(learner, samples, 0.0)
    shifted[0].sampler_logprobs[0] += 12.0  # ratio e^-12 < 1e-4
    m = learner.train_step(shifted)
    rest = [dict(vars(s)) for s in samples]
    rest[0]["advantage"] = 0.0  # the same batch (same denominator) without response 0's gradient
    want = _learner(tiny_model_dir).train_step([Sample(**r) for r in rest])
    assert m["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    n0 = len(samples[0].response_ids)
    assert m["is_vetoed_frac"] == pytest.approx(n0 / sum(len(s.response_ids) for s in samples), rel=1e-5)


def test_reference_answers_get_no_rollout_correction(tiny_model_dir):
    samples = _samples(seed=9)
    for s in samples:  # a "sampler" that put probability 1 on each token, as the warm start's
        s.sampler_logprobs, s.sampled = [0.0] * len(s.response_ids), False
    m = _learner(tiny_model_dir, rollout_is="token", rollout_is_veto=1e-4).train_step(samples)
    assert m["is_weight_mean"] == 1.0 and m["is_vetoed_frac"] == 0.0
