"""Several learner ranks: the collectives they share and the FSDP2 sharding of the policy.

Every rank receives the *same* batch and trains on its share (balanced by tokens). The loss keeps the
whole batch's normalisation: the token (or sequence) count is summed over ranks before backward, each
rank's micro-batch loss is divided by that global count, and FSDP2 *sums* (not averages) gradients in
its reduce-scatter, so

    grad = sum_ranks sum_microbatches d(loss_mb)/dw = d(batch aggregate)/dw,

the same gradient one process gets from the whole batch (up to float summation order). The clip uses
the global norm (clip_grad_norm_ on DTensor gradients reduces over the shards). Each decoder layer is
one FSDP unit; embeddings, final norm and LM head (often tied) form the root unit, which is a small
module whose forward computes the packed log-probs, so the head is gathered while it is used.

Ranks must run the same number of forwards and backwards (FSDP gathers weights collectively), so a
rank with fewer micro-batches runs idle ones whose loss is multiplied by zero.

One process is a `LocalContext`: the same calls with identity collectives, so the learner's step reads
the same for one rank and for N. Launch N ranks with `torchrun --nproc-per-node N ...` (env://
rendezvous) or as Ray actors (golong.roles.LearnerGroup), which set RANK/WORLD_SIZE/LOCAL_RANK/
MASTER_ADDR/MASTER_PORT; call `init_learner_group()` before building the `Learner`: it notices the
process group and shards itself. `python -m tests.fsdp_check` runs a learner check over N ranks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from golong.packing import PackedRow, pack, row_logprobs


@dataclass
class DistContext:
    """This process's place among the learner ranks."""

    rank: int
    world: int
    device: torch.device
    mesh: Any  # torch.distributed.device_mesh.DeviceMesh over all ranks

    # ------------------------------------------------------------ collectives on small values

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks (float64, so token counts stay exact)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def all_max(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def sum_dicts(self, d: dict[str, float]) -> dict[str, float]:
        """Key-wise sum over ranks of small metric dicts (ranks may hold different keys)."""
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, d)
        out: dict[str, float] = {}
        for p in parts:
            for k, v in p.items():
                out[k] = out.get(k, 0.0) + v
        return out

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------ the batch

    def my_share(self, lengths: Sequence[int]) -> list[int]:
        """Indices of the samples this rank trains on (see `split_by_tokens`)."""
        return split_by_tokens(lengths, self.world)[self.rank]


@dataclass
class LocalContext:
    """One learner rank and no process group: DistContext's calls, with identity collectives."""

    device: torch.device
    rank: int = 0
    world: int = 1
    mesh: Any = None

    def all_sum(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in values]

    def all_max(self, value: int) -> int:
        return value

    def sum_dicts(self, d: dict[str, float]) -> dict[str, float]:
        return dict(d)

    def my_share(self, lengths: Sequence[int]) -> list[int]:
        return list(range(len(lengths)))


RankContext = DistContext | LocalContext


def split_by_tokens(lengths: Sequence[int], world: int) -> list[list[int]]:
    """Longest-first greedy split of sample indices into `world` shares of near-equal total length.

    Each sample, longest first, goes to the share with the fewest tokens so far (lowest rank on ties);
    every share lists its indices in increasing order. Deterministic, so all ranks agree without talking.
    """
    shares: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        shares[r].append(i)
        load[r] += lengths[i]
    return [sorted(s) for s in shares]


def init_learner_group(backend: str | None = None) -> DistContext | None:
    """Join the learner process group from the environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

    backend: "nccl" on CUDA, "gloo" on CPU (None picks by whether CUDA is present). Sets this process's
    CUDA device to LOCAL_RANK. Returns None for a single process (WORLD_SIZE unset or 1).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # NVLink multicast (NVLS) off unless asked for: on the project's lent H200 hosts it must stay off
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://")
    return current_context()


def current_context() -> DistContext | None:
    """The learner group if torch.distributed is initialised with more than one rank, else None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return None
    from torch.distributed.device_mesh import init_device_mesh

    cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    return DistContext(dist.get_rank(), dist.get_world_size(), device, mesh)


# ---------------------------------------------------------------- sharding


class LogprobRoot(torch.nn.Module):
    """The root FSDP unit: owns the causal LM; its forward is `row_logprobs` of one packed row.

    The log-probs call the decoder and the LM head separately; wrapping both in one forward keeps the
    root unit's weights (embeddings, final norm, head) gathered from the first to the last use,
    including the chunked head's recompute in backward.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, row: PackedRow, chunk: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        # whole tensors out, not the per-sequence views: FSDP hooks its backward onto the outputs
        logps, ents = row_logprobs(self.model, row, chunk=chunk, temperature=temperature)
        return torch.cat(logps), torch.cat(ents)

    def logprobs(self, row: PackedRow, chunk: int, temperature: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`row_logprobs` through the root's forward: per-sequence log-probs and entropies (the caller
        holds `shared_attention` for a shared-prompt row)."""
        logp, ent = self(row, chunk, temperature)
        sizes = [r for _, _, r in row.spans]
        return list(logp.split(sizes)), list(ent.split(sizes))


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a causal LM (peft wrapper allowed), one FSDP unit each."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(base.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(f"{type(base).__name__} has no decoder .layers to shard; several learner ranks need a standard decoder")
    return list(layers)


def shard(model: torch.nn.Module, ctx: DistContext, *, bf16_compute: bool = False) -> LogprobRoot:
    """FSDP2 over the learner ranks: each decoder layer, then the root; gradients are summed, not averaged.

    bf16_compute: float32 shards gathered as bf16 for compute, gradients reduced in float32
    (the float32-master-weights split, done by FSDP instead of a second copy of the weights).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_compute else MixedPrecisionPolicy()
    units = [fully_shard(layer, mesh=ctx.mesh, mp_policy=mp) for layer in decoder_layers(model)]
    root = fully_shard(LogprobRoot(model), mesh=ctx.mesh, mp_policy=mp)
    # the loss is already divided by the global count: sum gradients over ranks, in every unit (the
    # setting is per unit); sum-only collectives, which gloo supports too. The default would average.
    for unit in [*units, root]:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    return root


def idle_row() -> PackedRow:
    """A one-token sequence for a rank that has run out of micro-batches (its loss is scaled by 0)."""
    return pack([[0]], [[0]])


def pad_rows(rows: list[tuple[list[int], PackedRow]], ctx: RankContext) -> list[tuple[list[int], PackedRow]]:
    """Append idle rows (no sample indices) so every rank has as many micro-batches as the busiest."""
    n = ctx.all_max(len(rows))
    return rows + [([], idle_row()) for _ in range(n - len(rows))]


# ---------------------------------------------------------------- full weights out of the shards


def _full(v: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) value, cast before the gather, on CPU."""
    v = v.detach()
    if dtype is not None and v.is_floating_point():
        v = v.to(dtype)
    if hasattr(v, "full_tensor"):
        v = v.full_tensor()
    return v.cpu()


@torch.no_grad()
def iter_full_state(model: torch.nn.Module, ctx: DistContext, dtype: torch.dtype | None = None,
                    bucket_bytes: int = 1 << 30) -> Iterator[dict[str, torch.Tensor]]:
    """Full (unsharded) weights in buckets of about `bucket_bytes`, named as in the HF model.

    Collective: every rank must iterate. Tensors are gathered one at a time, so device memory peaks
    at one tensor beyond the shards; rank 0 yields CPU copies, the other ranks yield empty dicts.
    """
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, value in model.state_dict().items():
        full = _full(value, dtype)
        if ctx.rank == 0:
            bucket[name] = full
            size += full.numel() * full.element_size()
        if size >= bucket_bytes:
            yield bucket
            bucket, size = {}, 0
    if bucket or ctx.rank != 0:
        yield bucket
