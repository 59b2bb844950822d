"""Learner performance settings on a tiny model: checkpoint policies give the same gradients and
skip the attention recompute, pre-built policies train like loaded ones, LoRA keeps a bf16 base."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from golong.checkpointing import ATTENTION_OPS
from golong.config import AlgoConfig, LoraConfig, ModelConfig, OptimConfig
from golong.learner import Learner, Sample
from golong.models import enable_checkpointing
from golong.packing import pack, packed_logprobs


class _CountAttention(TorchDispatchMode):
    """Counts forward attention-kernel launches (the backward kernels are other ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._overloadpacket in ATTENTION_OPS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def tiny3(tiny_tokenizer):
    from tests.tiny import build_model

    model = build_model(tiny_tokenizer, layers=3)
    model.config._attn_implementation = "sdpa"
    return model


def _grads_and_calls(base, policy: str | None, layers: int | None = None) -> tuple[torch.Tensor, int]:
    model = copy.deepcopy(base).train()
    if policy is not None:
        enable_checkpointing(model, policy, layers)
    row = pack([[5, 6, 7, 8, 9, 10], [20, 21, 22]], [[11, 12, 13, 14], [30, 31]])
    counter = _CountAttention()
    with counter:
        lps, _ = packed_logprobs(model, row, chunk=3)
        (torch.cat(lps) * torch.linspace(-1, 1, 6)).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return grads, counter.calls


def test_checkpoint_policies_give_the_same_gradients(tiny3):
    ref, _ = _grads_and_calls(tiny3, None)
    for policy in ("full", "save_attention"):
        grads, _ = _grads_and_calls(tiny3, policy)
        torch.testing.assert_close(grads, ref, rtol=1e-5, atol=1e-6)


def test_save_attention_skips_the_attention_recompute(tiny3):
    # 3 layers: no checkpointing runs attention 3 times, "full" 6 (forward + recompute), "save_attention" 3
    assert _grads_and_calls(tiny3, None)[1] == 3
    assert _grads_and_calls(tiny3, "full")[1] == 6
    assert _grads_and_calls(tiny3, "save_attention")[1] == 3


def test_checkpoint_layers_limits_the_recompute_to_the_first_layers(tiny3):
    grads, calls = _grads_and_calls(tiny3, "full", layers=1)
    assert calls == 4  # one layer recomputed
    torch.testing.assert_close(grads, _grads_and_calls(tiny3, None)[0], rtol=1e-5, atol=1e-6)


def test_unknown_checkpoint_policy_is_a_config_error(tiny_model_dir):
    with pytest.raises(ValueError, match="checkpoint_policy"):
        ModelConfig(path=str(tiny_model_dir), checkpoint_policy="sometimes")


def _samples() -> list[Sample]:
    return [Sample([5, 6, 7, 8], [9, 10, 11], advantage=1.0), Sample([12, 13], [14, 15, 16, 17], advantage=-0.5)]


def test_built_policy_trains_like_the_loaded_one(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig(path=str(tiny_model_dir), gradient_checkpointing=True)
    optim, algo = OptimConfig(lr=1e-3, logprob_chunk=2), AlgoConfig()
    loaded = Learner(cfg, optim, algo, device="cpu")
    built = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    given = Learner(cfg, optim, algo, device="cpu", policy=(built, tiny_tokenizer))
    a, b = loaded.train_step(_samples()), given.train_step(_samples())
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    for p, q in zip(loaded.model.parameters(), given.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_bf16_lora_keeps_the_frozen_base_in_bf16_and_adapters_in_fp32(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir), dtype="bfloat16", lora=LoraConfig(r=4, alpha=8))
    learner = Learner(cfg, OptimConfig(lr=1e-2), AlgoConfig(), device="cpu")
    frozen = {p.dtype for p in learner.model.parameters() if not p.requires_grad}
    trained = {n: p for n, p in learner.model.named_parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16}
    assert trained and all("lora_" in n and p.dtype == torch.float32 for n, p in trained.items())
    before = {n: p.detach().clone() for n, p in trained.items()}
    metrics = learner.train_step(_samples())
    assert metrics["grad_norm"] > 0
    assert any(not torch.equal(before[n], p) for n, p in trained.items())


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten() for t in tensors])


def test_optimizer_held_master_weights_keep_small_updates(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir), dtype="bfloat16")
    learner = Learner(cfg, OptimConfig(lr=1e-6, master_weights="optimizer"), AlgoConfig(), device="cpu")
    params = list(learner.model.parameters())
    assert {p.dtype for p in params} == {torch.bfloat16}
    masters = [m for _, m in learner._masters]
    assert len(masters) == len(params) and {m.dtype for m in masters} == {torch.float32}
    before = _flat(masters).clone()
    learner.train_step(_samples())
    # an lr-1e-6 Adam step moves (almost) every float32 copy; the bf16 weights are their rounding
    assert ((_flat(masters) - before).abs() > 0).float().mean().item() > 0.5
    for p, m in learner._masters:
        assert torch.equal(p, m.to(torch.bfloat16))
        assert p.grad is None and m.grad is None


def test_optimizer_held_master_weights_follow_the_fp32_model_update(tiny_model_dir):
    """Same data, same lr: the float32 copies land where the float32-model (autocast) learner's weights
    land, up to bf16 activation rounding (Adam's first step is lr * g / |g| per weight)."""
    cfg = ModelConfig(path=str(tiny_model_dir), dtype="bfloat16")
    optim = dict(lr=1e-3, weight_decay=0.0)
    held = Learner(cfg, OptimConfig(**optim, master_weights="optimizer"), AlgoConfig(), device="cpu")
    model = Learner(cfg, OptimConfig(**optim), AlgoConfig(), device="cpu")
    start = _flat(model.model.parameters()).clone()
    held.train_step(_samples())
    model.train_step(_samples())
    d_held = _flat(m for _, m in held._masters) - start
    d_model = _flat(model.model.parameters()) - start
    agree = (torch.sign(d_held) == torch.sign(d_model)).float().mean().item()
    assert agree > 0.9
    assert (d_held - d_model).norm() / d_model.norm() < 0.5


def test_optimizer_held_master_weights_survive_save_and_load(tiny_model_dir, tmp_path):
    cfg = ModelConfig(path=str(tiny_model_dir), dtype="bfloat16")
    optim = OptimConfig(lr=1e-5, master_weights="optimizer")
    a = Learner(cfg, optim, AlgoConfig(), device="cpu")
    a.train_step(_samples())
    a.save(tmp_path / "ckpt")
    b = Learner(cfg, optim, AlgoConfig(), device="cpu")
    b.load(tmp_path / "ckpt")
    torch.testing.assert_close(_flat(m for _, m in b._masters), _flat(m for _, m in a._masters), rtol=0, atol=0)
    a.train_step(_samples())
    b.train_step(_samples())
    torch.testing.assert_close(_flat(m for _, m in b._masters), _flat(m for _, m in a._masters), rtol=0, atol=0)
    torch.testing.assert_close(_flat(b.model.parameters()), _flat(a.model.parameters()), rtol=0, atol=0)


_NO_COMPILER = shutil.which("g++") is None and shutil.which("c++") is None


@pytest.mark.skipif(_NO_COMPILER, reason="torch.compile on the CPU needs a C++ compiler")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_layers_train_like_eager_ones(tiny_model_dir, checkpointing):
    """model.compile: one update gives the same metrics and weights as the eager learner."""
    samples = [
        Sample(prompt_ids=list(range(5, 25)), response_ids=list(range(30, 40)), advantage=1.0),
        Sample(prompt_ids=list(range(7, 19)), response_ids=list(range(40, 52)), advantage=-0.5),
    ]
    runs = []
    for compile_ in (False, True):
        cfg = ModelConfig(path=str(tiny_model_dir), compile=compile_, gradient_checkpointing=checkpointing)
        learner = Learner(cfg, OptimConfig(lr=1e-3), AlgoConfig(), device="cpu")
        metrics = learner.train_step(samples)
        runs.append((metrics, torch.cat([p.detach().flatten() for p in learner.model.parameters()])))
    (eager, w_eager), (compiled, w_compiled) = runs
    assert compiled["grad_norm"] == pytest.approx(eager["grad_norm"], rel=1e-4)
    torch.testing.assert_close(w_compiled, w_eager, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(_NO_COMPILER, reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_learner_trains_inline_with_a_shared_engine(tiny_model_dir, tmp_path):
    """The rollout engine decodes the learner's (compiled) model eagerly; the loop runs and the
    sampler's log-probs agree with the compiled learner's."""
    from golong.trainer import train
    from tests.test_trainer import pool, recipe

    hist = train(recipe(tiny_model_dir, tmp_path / "c", model__compile=True, cluster__share_weights=True), rewards=pool(), quiet=True)
    assert [h["step"] for h in hist] == [1, 2]
    assert all(h["drift"] < 1e-3 for h in hist)


@pytest.mark.parametrize("policy", [None, "full", "save_attention"])
def test_shared_prompts_train_like_separate_sequences(tiny_model_dir, policy):
    """share_prompts packs each group behind one copy of its prompt (fewer tokens through the model)
    and makes the same update as packing every (prompt, response) on its own, also when checkpointed
    layers recompute their forward in backward."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 200, (n,), generator=g).tolist() for n in (30, 12)]
    samples = [
        Sample(prompt_ids=prompts[k], response_ids=torch.randint(5, 200, (r,), generator=g).tolist(), advantage=a,
               group_id=k)
        for k, r, a in [(0, 6, 1.0), (0, 9, -1.0), (0, 3, 0.5), (1, 7, 1.0), (1, 5, -0.5)]
    ]
    runs = []
    for share in (True, False):
        model = ModelConfig(path=str(tiny_model_dir), gradient_checkpointing=policy is not None, checkpoint_policy=policy or "full")
        learner = Learner(model, OptimConfig(lr=1e-3, share_prompts=share, micro_batch_tokens=48),
                          AlgoConfig(), device="cpu")
        metrics = learner.train_step(samples)
        weights = torch.cat([p.detach().flatten() for p in learner.model.parameters()])
        runs.append((metrics["packed_tokens"], metrics, weights))
    (shared_tokens, shared, w_shared), (plain_tokens, plain, w_plain) = runs
    assert shared_tokens == 30 + 6 + 9 + 3 + 12 + 7 + 5 and plain_tokens == 3 * 30 + 2 * 12 + 6 + 9 + 3 + 7 + 5
    for key in ("loss", "grad_norm", "entropy"):
        assert shared[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key
    # AdamW's first step is lr * g / |g| per element: where |g| is ~0, summation order shows (1e-5 of lr 1e-3)
    torch.testing.assert_close(w_shared, w_plain, rtol=1e-4, atol=2e-5)


def test_compile_without_a_cpu_compiler_is_a_one_line_error(tiny_model_dir, monkeypatch):
    import golong.learner as learner_mod
    from golong.models import ModelLoadError

    monkeypatch.setattr(learner_mod.shutil, "which", lambda name: None)
    with pytest.raises(ModelLoadError, match="needs a C\\+\\+ compiler"):
        Learner(ModelConfig(path=str(tiny_model_dir), compile=True), OptimConfig(), AlgoConfig(), device="cpu")
