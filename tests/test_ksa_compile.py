"""Compiled KSA layers: the Triton kernels as opaque custom ops (opcheck), and compiled decoder layers
that compute what eager ones do, forward and backward (reference kernel on the CPU; the Triton
kernels through its interpreter on tiny shapes)."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from golong.packing import pack, pack_shared, packed_logprobs
from ksa.layout import expanded_length
from ksa.triton_attention import triton_attention_backward_op, triton_attention_op
from tests.test_ksa_model import ksa_tiny

needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile on the CPU needs a C++ compiler"
)


def _qkv(seq_lens, chunk=4, hq=2, hkv=1, d=16, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    length = sum(expanded_length(t, chunk) for t in seq_lens)
    return [torch.randn(1, h, length, d, generator=g).requires_grad_(grad) for h in (hq, hkv, hkv)]


def test_triton_ops_pass_opcheck():
    """Schema, fake (meta) implementations, autograd registration and AOT dispatch of both ops, with
    GQA and two packed sequences (one ending in a partial chunk)."""
    seq_lens = [13, 8]
    q, k, v = _qkv(seq_lens, grad=True)
    args = (q, k, v, seq_lens, 4, 1, 1, 0.25, True)
    torch.library.opcheck(triton_attention_op, args)
    out, lse = triton_attention_op(*(x.detach() for x in (q, k, v)), *args[3:])
    grad = torch.randn_like(out)
    torch.library.opcheck(triton_attention_backward_op, (grad, q.detach(), k.detach(), v.detach(), out, lse, *args[3:]))


def _ctx(model, length_text, window):
    ctx = model._context("ksa", text_len=length_text)
    from ksa.attention import ksa_mask

    ctx.masks = {w: ksa_mask((length_text,), 4, 1, w, ctx.impl, True, "cpu") for w in set(ctx.windows)}
    return ctx


@needs_compiler
def test_compiled_decoder_layer_equals_eager(tiny_tokenizer):
    """One KSA decoder layer (window 1 chunk, reference kernel) compiled: output and the gradients of
    its input and parameters equal eager's."""
    _, model = ksa_tiny(tiny_tokenizer, windows=(1, 3), chunk=4)
    model._use_ksa_attention()
    layer = model.model.layers[0]
    compiled = copy.deepcopy(layer)
    compiled.compile()
    text_len = 22
    from ksa.layout import expand_positions

    pos, _ = expand_positions(text_len, 4, 1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, pos.numel(), model.config.hidden_size, generator=g)
    cos_sin = model.model.rotary_emb(x, pos[None])
    ctx = _ctx(model, text_len, 1).at_layer(0)
    results = []
    for mod in (layer, compiled):
        xi = x.clone().requires_grad_(True)
        out = mod(xi, attention_mask=None, position_ids=pos[None], position_embeddings=cos_sin, ksa_ctx=ctx)
        out = out[0] if isinstance(out, tuple) else out
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), xi.grad, {n: p.grad for n, p in mod.named_parameters()}))
    (o1, gx1, gp1), (o2, gx2, gp2) = results
    torch.testing.assert_close(o2, o1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx2, gx1, atol=1e-5, rtol=1e-4)
    for n in gp1:
        torch.testing.assert_close(gp2[n], gp1[n], atol=2e-5, rtol=1e-4, msg=n)


def _logprobs_and_grads(model, row):
    model.zero_grad()
    lp = torch.cat(packed_logprobs(model, row, chunk=4)[0])
    (lp * torch.linspace(-1, 1, lp.numel())).sum().backward()
    return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("impl, extra", [("reference", {}), ("reference", {"summary_qkv": True, "mix_coeff": 0.5}), ("triton", {})],
                         ids=["reference", "summary-qkv", "triton"])
def test_compiled_ksa_model_equals_eager(tiny_tokenizer, impl, extra):
    """golong's compile_layers on a KSA policy: log-probs and parameter gradients of packed pairs and of
    a shared-prompt row (on the CPU through its dense mask) equal the eager model's."""
    from golong.models import compile_layers

    _, model = ksa_tiny(tiny_tokenizer, windows=(1, 3, 1), chunk=4, impl=impl, **extra)
    model.train()
    compiled = copy.deepcopy(model)
    compile_layers(compiled, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(5, model.config.vocab_size, (n,), generator=g).tolist()  # noqa: E731
    groups = [(rand(10), [rand(7), rand(12)]), (rand(5), [rand(9)])]
    flat = [(p, r) for p, rs in groups for r in rs]
    rows = [pack([p for p, _ in flat], [r for _, r in flat]), pack_shared(groups)]
    for row in rows:
        (lp1, g1), (lp2, g2) = _logprobs_and_grads(model, row), _logprobs_and_grads(compiled, row)
        torch.testing.assert_close(lp2, lp1, atol=2e-5, rtol=0)
        assert g1.keys() == g2.keys()
        for n in g1:
            torch.testing.assert_close(g2[n], g1[n], atol=5e-5, rtol=1e-4, msg=n)


@pytest.mark.slow
@needs_compiler
def test_ksa_policy_with_compile_trains_like_eager(tiny_model_dir):
    """model.compile with a KSA policy (the config once refused it): one update with shared prompts
    gives the eager learner's metrics and weights."""
    from golong.config import AlgoConfig, ModelConfig, OptimConfig
    from golong.learner import Learner, Sample

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, 200, (14,), generator=g).tolist()
    samples = [Sample(prompt_ids=prompt, response_ids=torch.randint(5, 200, (r,), generator=g).tolist(), advantage=a, group_id=0)
               for r, a in [(9, 1.0), (5, -1.0)]]
    runs = []
    for compile_ in (False, True):
        cfg = ModelConfig(path=str(tiny_model_dir), compile=compile_, ksa={"chunk": 4, "windows": [1, 1]})
        learner = Learner(cfg, OptimConfig(lr=1e-3), AlgoConfig(), device="cpu")
        assert (learner.model.model.layers[0]._compiled_call_impl is not None) == compile_
        metrics = learner.train_step(samples)
        runs.append((metrics, torch.cat([p.detach().flatten() for p in learner.model.parameters()])))
    (eager, w_eager), (compiled, w_compiled) = runs
    assert compiled["packed_tokens"] == eager["packed_tokens"] == 14 + 9 + 5
    assert compiled["grad_norm"] == pytest.approx(eager["grad_norm"], rel=1e-4)
    torch.testing.assert_close(w_compiled, w_eager, rtol=1e-4, atol=2e-5)


class _CountKSAKernel(torch.utils._python_dispatch.TorchDispatchMode):
    calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._overloadpacket._qualified_op_name == "ksa::triton_attention":
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_save_attention_keeps_the_ksa_kernel_outputs(tiny_tokenizer):
    """Checkpointing with policy "save_attention" keeps the Triton KSA kernel's outputs (its forward is
    not run again in backward) and gives the gradients of full recompute."""
    from golong.models import enable_checkpointing

    _, base = ksa_tiny(tiny_tokenizer, windows=(1, 3), chunk=4, impl="triton")
    row = pack([list(range(5, 16)), list(range(20, 26))], [list(range(30, 37)), list(range(40, 43))])
    results = {}
    for policy in ("full", "save_attention"):
        model = copy.deepcopy(base).train()
        enable_checkpointing(model, policy)
        with _CountKSAKernel() as counter:
            _, grads = _logprobs_and_grads(model, row)
        results[policy] = (counter.calls, grads)
    assert results["full"][0] == 4 and results["save_attention"][0] == 2  # 2 layers: forward (+ recompute)
    for n, g in results["full"][1].items():
        torch.testing.assert_close(results["save_attention"][1][n], g, atol=1e-5, rtol=1e-5, msg=n)


@needs_compiler
def test_layers_of_one_window_share_a_graph(tiny_tokenizer):
    """Compiled KSA layers specialise on their window at most, not on their index: four layers with two
    distinct windows (and summary q/k/v hooks) make at most two graphs, not four (compile time on a
    28-layer model; dynamic from the first call, compile_layers' layers take the window as a symbolic
    int and share one)."""
    from torch._dynamo.utils import counters

    from golong.models import compile_layers

    _, model = ksa_tiny(tiny_tokenizer, windows=(1, 1, 3, 1), chunk=4, summary_qkv=True, mix_coeff=0.5)
    torch._dynamo.reset()
    counters.clear()
    compile_layers(model, torch.device("cpu"))
    with torch.no_grad():
        model(input_ids=torch.randint(5, 500, (1, 22), generator=torch.Generator().manual_seed(0)))
    assert 1 <= counters["stats"]["unique_graphs"] <= 2
