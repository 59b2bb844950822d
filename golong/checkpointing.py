"""What checkpoint_policy "save_attention" keeps, and how it keeps an attention call that torch's
selective checkpointing cannot see.

Selective checkpointing (torch.utils.checkpoint.create_selective_checkpoint_contexts) decides per
dispatcher op: the attention kernels' outputs are kept, everything else in the layer is recomputed
in backward. A compiled function called between a compiled layer's graphs (the shared-prompt
FlexAttention, ksa.flex_attention.flex_between_graphs) is no dispatcher op: the policy never sees it,
and the layer's recompute used to run its forward kernel a second time (the learner profile of
1.7B / 32K, H100, 2026-12-05: 112 FlexAttention forward kernels for 56 layer calls, ~1.2 s of a
7.8 s learner phase). `kept_through_recompute` runs such a call once:

    forward:    out = fn(*args) with its autograd graph holding its saved tensors itself (identity
                saved-tensor hooks, so the checkpoint's hooks do not drop them); out recorded
    recompute:  the recorded out, in call order (fn does not run); backward reaches fn's own
                backward through the forward's graph

It costs fn's saved tensors (for FlexAttention q, k, v, out and the log-sum-exp) until backward. Measured
in `golong train` at 1.7B / 32K on an H100 (2026-12-05): learner 6.59 s instead of 7.79, peak memory 63.6
instead of 48.0 GiB.
"""

from __future__ import annotations

import threading

import torch

# Attention kernels whose outputs "save_attention" keeps: recomputing them in backward is the
# costliest part of the recompute at long lengths (O(T^2)), keeping them costs O(T) per layer.
# The KSA Triton kernel (ksa/triton_attention.py, a custom op) is matched by name in the policy.
ATTENTION_OPS = tuple(
    getattr(torch.ops.aten, name)
    for name in (
        "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
    )
    if hasattr(torch.ops.aten, name)
)

_current = threading.local()  # .phase: (record, recomputing) of the innermost save_attention checkpoint


class _Phase:
    """One half of a checkpointed call's contexts: selective checkpointing's dispatch mode, plus
    which phase kept_through_recompute is in and where its outputs are recorded."""

    def __init__(self, mode, record: dict, recomputing: bool):
        self.mode, self.record, self.recomputing = mode, record, recomputing

    def __enter__(self):
        self.outer = getattr(_current, "phase", None)
        _current.phase = (self.record, self.recomputing)
        if self.recomputing:
            self.record["next"] = 0
        return self.mode.__enter__()

    def __exit__(self, *exc):
        _current.phase = self.outer
        return self.mode.__exit__(*exc)


def _policy(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    packet = getattr(op, "_overloadpacket", op)
    saved = packet in ATTENTION_OPS or getattr(packet, "_qualified_op_name", "") == "ksa::triton_attention"
    return CheckpointPolicy.MUST_SAVE if saved else CheckpointPolicy.PREFER_RECOMPUTE


def save_attention_context():
    """The (forward, recompute) contexts of one checkpointed call under "save_attention": attention
    kernel outputs kept, everything else recomputed, kept_through_recompute calls run once."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    forward, recompute = create_selective_checkpoint_contexts(_policy)
    if torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.PROXY) is not None:
        # a checkpoint traced into a compiled layer's graph (AOTAutograd, torch.utils.checkpoint's own
        # test): the partitioner applies the policy and takes only its two dispatch modes; no
        # kept_through_recompute call runs inside a traced graph (it is compiler-disabled)
        return forward, recompute
    record = {"outputs": [], "next": 0}
    return _Phase(forward, record, False), _Phase(recompute, record, True)


def _held(t: torch.Tensor) -> torch.Tensor:
    """Saved-tensor hook that keeps the tensor as it is (pack and unpack)."""
    return t


@torch.compiler.disable  # runs eagerly between compiled graphs: its phase is read at every call
def kept_through_recompute(fn, *args):
    """fn(*args), run once under a "save_attention" checkpoint (module docstring); elsewhere (no
    checkpoint, policy "full", no grad) simply fn(*args)."""
    phase = getattr(_current, "phase", None)
    if phase is None or not torch.is_grad_enabled():
        return fn(*args)
    record, recomputing = phase
    if recomputing:
        i = record["next"]
        if i >= len(record["outputs"]):
            raise RuntimeError("a checkpointed layer's recompute made more kept calls than its forward (the layer's forward must not branch on recompute)")
        record["next"] = i + 1
        return record["outputs"][i]
    with torch.autograd.graph.saved_tensors_hooks(_held, _held):  # the same functions every call
        out = fn(*args)
    record["outputs"].append(out)
    return out
