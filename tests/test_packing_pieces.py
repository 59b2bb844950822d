"""optim.shared_prompt_kernel "sdpa": a shared-prompt row's attention as unmasked pieces merged by their
log-sum-exp (ksa.pieces), against the dense mask of the same rule (shared_mask on the CPU): outputs
and gradients, padded and unpadded rows, grouped-query heads, empty responses; a response that loses
its prompt must fail the comparison; a tiny model's log-probs and weight gradients; under
save_attention the pieces' kernels run once (not again in the recompute)."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from golong.packing import (
    SharedPieces,
    bucket_length,
    pack_shared,
    pieces_attention,
    shared_mask,
    shared_pieces,
)
from tests.test_packing_buckets import _random_units, logprobs_and_grads

PIECE_OPS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_flash_attention")


def _attend_both(row, pieces=None, heads=(4, 2), dim=16, seed=0):
    """(dense output, pieces output, dense grads, pieces grads) for random q, k, v of the row's length."""
    length = row.input_ids.shape[1]
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(1, h, length, dim, generator=g, dtype=torch.float64) for h in (heads[0], heads[1], heads[1])]
    weight = torch.randn(1, heads[0], length, dim, generator=g, dtype=torch.float64)
    results = []
    for kind in ("dense", "pieces"):
        q, k, v = (t.clone().requires_grad_(True) for t in base)
        if kind == "dense":
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=shared_mask(row, "cpu"),
                                                                   enable_gqa=heads[0] != heads[1])
        else:
            out = pieces_attention(q, k, v, pieces or shared_pieces(row), None, heads[0] != heads[1])
        (out * weight).sum().backward()
        results.append((out.detach(), [t.grad for t in (q, k, v)]))
    return results


@pytest.mark.parametrize("seed", range(4))
def test_pieces_equal_the_dense_rule(seed):
    rng = random.Random(seed)
    units = _random_units(rng)
    units[0][1].append([])  # an empty response: no piece of its own
    plain = pack_shared(units)
    row = pack_shared(units, pad_to=bucket_length(plain.input_ids.shape[1])) if seed % 2 else plain
    heads = (4, 2) if seed < 2 else (3, 3)
    (dense, dense_grads), (pieces, piece_grads) = _attend_both(row, heads=heads, seed=seed)
    torch.testing.assert_close(pieces, dense, atol=1e-10, rtol=1e-10)
    for a, b in zip(piece_grads, dense_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("heads", [(4, 2), (3, 3)])
def test_pieces_of_a_few_tokens_equal_the_dense_rule(heads):
    """Pieces of one to a few tokens (a bucketed row's one padding token, a one-token response, a short
    prompt) take the small exact path (cuDNN's backward refuses one query over one key): outputs and
    gradients equal the dense rule, next to pieces long enough for the kernel."""
    units = [([3, 4, 5], [[6], [7, 8, 9, 10, 11]]), ([5] * 40, [[1], [2] * 30])]
    plain = pack_shared(units)
    row = pack_shared(units, pad_to=plain.input_ids.shape[1] + 1)
    assert shared_pieces(row).units[-1] == ((plain.input_ids.shape[1], 1), ())
    (dense, dense_grads), (pieces, piece_grads) = _attend_both(row, heads=heads, seed=3)
    torch.testing.assert_close(pieces, dense, atol=1e-10, rtol=1e-10)
    for a, b in zip(piece_grads, dense_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_a_response_without_its_prompt_fails_the_comparison():
    """The check can fail: pieces whose responses do not see their prompt (each response a prompt of
    its own) give other outputs."""
    units = _random_units(random.Random(5))
    units[0] = (units[0][0], [[7] * 20, [9] * 30])
    row = pack_shared(units)
    good = shared_pieces(row)
    broken = SharedPieces(tuple(
        (piece, ()) for (prompt, responses) in good.units for piece in (prompt, *responses)))
    (dense, _), (pieces, _) = _attend_both(row, pieces=broken)
    assert not torch.allclose(pieces, dense, atol=1e-6)


def test_pieces_of_a_row():
    row = pack_shared([([5, 6, 7], [[8, 9], [10]]), ([11], [])], pad_to=10)
    assert shared_pieces(row) == SharedPieces((((0, 3), ((3, 2), (5, 1))), ((6, 1), ()), ((7, 3), ())))
    row.members[:3] = 0  # a response with no prompt before it
    with pytest.raises(ValueError, match="follow no prompt"):
        shared_pieces(row)


@pytest.mark.parametrize("checkpointing", [None, "save_attention"])
def test_model_logprobs_and_gradients_equal_the_dense_rule(tiny_model_dir, checkpointing):
    from transformers import AutoModelForCausalLM

    from golong.models import enable_checkpointing

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if checkpointing:
        model.train()  # transformers checkpoints layers in training mode only
        enable_checkpointing(model, checkpointing)
    units = _random_units(random.Random(3), vocab=model.config.vocab_size)
    results = []
    for kernel in ("flex", "sdpa"):  # flex on the CPU: the dense mask
        row = pack_shared(units, pad_to=640)
        row.kernel = kernel
        assert isinstance(shared_mask(row, "cpu"), SharedPieces if kernel == "sdpa" else torch.Tensor)
        results.append(logprobs_and_grads(model, row))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-4)


class _KernelCount(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the attention kernels that really run: entered outside the checkpoints, it sees a kernel
    that selective checkpointing runs and not one whose kept output it hands back."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func._overloadpacket.__name__ in PIECE_OPS
        return func(*args, **(kwargs or {}))


def test_pieces_run_once_under_save_attention(tiny_model_dir):
    """save_attention keeps the pieces' kernel outputs: the layers' recompute in backward runs none of
    them again (checkpoint_policy full does)."""
    from transformers import AutoModelForCausalLM

    from golong.models import enable_checkpointing

    units = _random_units(random.Random(3))
    pieces = shared_pieces(pack_shared(units))
    per_layer = sum(1 + (1 + sum(1 for r in responses if r[1]) if any(r[1] for r in responses) else 0)
                    for _, responses in pieces.units)
    counts = {}
    for policy in ("save_attention", "full"):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        model.train()
        enable_checkpointing(model, policy)
        row = pack_shared(units)
        row.kernel = "sdpa"
        with _KernelCount() as count:
            logprobs_and_grads(model, row)
        counts[policy] = count.n
    layers = model.config.num_hidden_layers
    assert counts == {"save_attention": layers * per_layer, "full": 2 * layers * per_layer}


def test_kernels_see_the_bshd_layout(tiny_model_dir, monkeypatch):
    """Every tensor the pieces hand a kernel, forward and backward, is laid out [B, S, H, D] in memory, as
    cuDNN's length-bucketed plans (TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1) require: a tiny model with grouped
    heads, under save_attention."""
    from transformers import AutoModelForCausalLM

    import ksa.pieces as pieces
    from golong.models import enable_checkpointing

    seen = []
    forward, backward = pieces._attention, pieces._attention_backward

    def record(*tensors):
        seen.extend(t.transpose(1, 2).is_contiguous() for t in tensors)

    def attention(q, k, v, causal, scale):
        record(q, k, v)
        return forward(q, k, v, causal, scale)

    def attention_backward(dout, q, k, v, out, *rest):
        record(dout, q, k, v, out)
        return backward(dout, q, k, v, out, *rest)

    monkeypatch.setattr(pieces, "_attention", attention)
    monkeypatch.setattr(pieces, "_attention_backward", attention_backward)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.num_attention_heads != model.config.num_key_value_heads
    model.train()
    enable_checkpointing(model, "save_attention")
    row = pack_shared(_random_units(random.Random(4), vocab=model.config.vocab_size))
    row.kernel = "sdpa"
    logprobs_and_grads(model, row)
    assert len(seen) > 50 and all(seen)


def test_the_learner_gives_its_rows_the_configured_kernel(tiny_model_dir):
    from pydantic import ValidationError

    from golong.config import AlgoConfig, ModelConfig, OptimConfig
    from golong.learner import Learner, Sample

    learner = Learner(ModelConfig(path=str(tiny_model_dir)), OptimConfig(shared_prompt_kernel="sdpa"), AlgoConfig(),
                      device="cpu")
    samples = [Sample(prompt_ids=[5, 6, 7, 8], response_ids=[9, 10 + i], advantage=1.0 - i, group_id=0) for i in range(2)]
    rows = learner._rows(samples)
    assert rows and all(row.kernel == "sdpa" and row.members is not None for _, row in rows)
    assert OptimConfig().shared_prompt_kernel == "flex"
    auto = Learner(ModelConfig(path=str(tiny_model_dir)), OptimConfig(shared_prompt_kernel="auto"), AlgoConfig(), device="cpu")
    assert all(row.kernel == "flex" for _, row in auto._rows(samples))  # 2-token responses: one FlexAttention
    with pytest.raises(ValidationError):
        OptimConfig(shared_prompt_kernel="triton")


def test_auto_takes_the_pieces_for_long_responses_only():
    """optim.shared_prompt_kernel "auto": the pieces from a mean response of MIN_MEAN_RESPONSE tokens on; the
    same rule picks a KSA shared row's window pieces on CUDA (on the CPU they always run: the tests' path)."""
    from golong.packing import shared_kernel
    from ksa.pieces import MIN_MEAN_RESPONSE, pays_off

    assert shared_kernel("auto", [MIN_MEAN_RESPONSE] * 8) == "sdpa"
    assert shared_kernel("auto", [MIN_MEAN_RESPONSE * 2 - 2, 1]) == "flex"  # a mean just below
    assert shared_kernel("auto", []) == "flex"
    assert shared_kernel("sdpa", [1]) == "sdpa" and shared_kernel("flex", [4096]) == "flex"
    assert pays_off(torch.device("cpu"), [1, 2]) and pays_off(torch.device("cpu"))
    assert not pays_off(torch.device("cuda"), [256] * 8)  # never the pieces for short responses on CUDA


def test_the_backward_gets_the_log_sum_exp_in_its_forwards_layout():
    """A kernel's log-sum-exp laid out [B, S, H] (cuDNN's with length-bucketed plans) goes back to its backward
    in that layout, a [B, H, S] one as [B, H, S]; the merged values are kept either way."""
    from ksa.pieces import _lse_as_forward

    merged = torch.randn(1, 5, 4).transpose(1, 2)  # [B, H=4, S=5], laid out [B, S, H] as the pieces keep it
    rows = merged[:, :, 1:4]
    for forward in (torch.empty(1, 3, 4, 1).transpose(1, 2), torch.empty(1, 4, 3, 1)):  # what a kernel returned
        got = _lse_as_forward(rows, forward.shape, forward.stride())
        assert torch.equal(got[..., 0], rows)
        assert got.stride() == forward.stride()  # cuDNN: [B, S, H] when bucketed, the last dim's stride 1


@pytest.mark.parametrize("given", [None, "0"])
def test_importing_golong_turns_on_cudnns_length_buckets_unless_told_otherwise(given):
    """`import golong` sets TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 (torch reads it at its first cuDNN attention
    call, so it must be set before any); a value the user set wins."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TORCH_CUDNN_SDPA_AVOID_RECOMPILE"}
    if given is not None:
        env["TORCH_CUDNN_SDPA_AVOID_RECOMPILE"] = given
    code = "import os, golong; print(os.environ['TORCH_CUDNN_SDPA_AVOID_RECOMPILE'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == (given or "1")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["cudnn", "flash"])
def test_cuda_pieces_equal_the_dense_rule(backend):
    """On CUDA in bf16 (cuDNN's fused attention, or flash with cuDNN's SDPA backend off), 16 query / 8 key
    heads laid out [B, S, H, D] as a model's (run_h200.sh raggedsdpa runs it again with cuDNN's
    length-bucketed plans, TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1), a long prompt and responses of odd lengths:
    outputs and gradients against the dense rule in float32, within bf16's error (compared with SDPA's own
    bf16 error under the dense mask)."""
    units = _random_units(random.Random(9), vocab=100)
    units[0] = (units[0][0] * 8, [[7] * 300, [9] * 129, [5]])  # and a one-token response
    row = pack_shared(units, pad_to=pack_shared(units).input_ids.shape[1] + 1)  # one padding token
    length = row.input_ids.shape[1]
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(1, length, h, 128, generator=g) for h in (16, 8, 8)]  # laid out as the model's q, k, v
    weight = torch.randn(1, 16, length, 128, generator=g).cuda()
    mask = shared_mask(row, "cpu").cuda()
    results = {}
    for kind, dtype in (("reference", torch.float32), ("dense", torch.bfloat16), ("pieces", torch.bfloat16)):
        q, k, v = (t.to("cuda", dtype).transpose(1, 2).detach().requires_grad_(True) for t in base)
        if kind == "pieces":
            before = torch.backends.cuda.cudnn_sdp_enabled()
            torch.backends.cuda.enable_cudnn_sdp(backend == "cudnn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    out = pieces_attention(q, k, v, shared_pieces(row), None, True)
                    (out.float() * weight).sum().backward()
            finally:
                torch.backends.cuda.enable_cudnn_sdp(before)
            assert not [w for w in caught if "Falling back" in str(w.message)]  # length-bucketed plans, when asked for
        else:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
            (out.float() * weight).sum().backward()
        results[kind] = [out.float(), *(t.grad.float() for t in (q, k, v))]
    for name, ref, dense, pieces in zip("out dq dk dv".split(), results["reference"], results["dense"], results["pieces"], strict=True):
        bf16_error = (dense - ref).norm() / ref.norm()
        assert (pieces - ref).norm() / ref.norm() <= 2 * bf16_error + 1e-3, name
