"""Several learner ranks: data parallel over samples, FSDP2-sharded weights, one process per device.

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

Launch: `torchrun --nproc-per-node N ...` (env:// rendezvous), a Ray actor per GPU that sets
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, or `python -m golong.distributed --nproc N ...`
(which wraps torchrun and runs a learner check; see `main`). Call `init_learner_group()` before
building the `Learner`: it notices the process group and shards itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from golong.packing import PackedRow, pack, packed_logprobs


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
    """The root FSDP unit: owns the causal LM; its forward is `packed_logprobs` of one packed row.

    The log-probs call the decoder and the LM head separately; wrapping both in one forward keeps the
    root unit's weights (embeddings, final norm, head) gathered from the first to the last use,
    including the chunked head's recompute in backward.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, row: PackedRow, chunk: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        # whole tensors out, not the per-sequence views: FSDP hooks its backward onto the outputs
        logps, ents = packed_logprobs(self.model, row, chunk=chunk, temperature=temperature)
        return torch.cat(logps), torch.cat(ents)

    def logprobs(self, row: PackedRow, chunk: int, temperature: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`packed_logprobs` through the root's forward: per-sequence log-probs and entropies."""
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


def pad_rows(rows: list[tuple[list[int], PackedRow]], ctx: DistContext) -> list[tuple[list[int], PackedRow]]:
    """Append idle rows (no sample indices) so every rank has as many micro-batches as the busiest."""
    n = ctx.all_max(len(rows))
    return rows + [([], idle_row()) for _ in range(n - len(rows))]


def global_drift(ctx: DistContext, pairs: list[tuple[list[float], torch.Tensor]]) -> dict[str, float]:
    """Sampler-vs-learner drift over all ranks' response tokens: mean |diff| and mean k3 KL."""
    from golong.algos import kl_penalty

    s_abs = s_kl = n = 0.0
    for sampler, lp in pairs:
        if len(sampler) != lp.numel():
            raise ValueError(f"sample has {len(sampler)} sampler logprobs for {lp.numel()} response tokens")
        sp, lp = torch.tensor(sampler, dtype=torch.float32), lp.float().cpu()
        s_abs += float((sp - lp).abs().sum())
        s_kl += float(kl_penalty(sp, lp, "k3").sum())
        n += sp.numel()
    s_abs, s_kl, n = ctx.all_sum([s_abs, s_kl, n])
    return {"drift": s_abs / n, "drift_kl": s_kl / n} if n else {}


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


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(learner: Any, tmp: Path) -> None:
    """Write model (HF layout) + tokenizer + full optimizer state from rank 0 into the folder `tmp`."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(learner._model, options=opts)
    optim = get_optimizer_state_dict(learner._model, learner.optimizer, options=opts)
    if learner.dist.rank == 0:
        learner._model.save_pretrained(tmp / "model", state_dict=weights)
        learner._tokenizer.save_pretrained(tmp / "model")
        torch.save({"optimizer": optim, "sharded": True}, tmp / "optimizer.pt")


def load_checkpoint(learner: Any, path: Path, weights: dict[str, torch.Tensor]) -> None:
    """Every rank reads the full weights and optimizer state and keeps its shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(learner._model, weights, options=opts)
    optim = torch.load(path / "optimizer.pt", weights_only=True)["optimizer"]  # plain data only
    set_optimizer_state_dict(learner._model, learner.optimizer, optim, options=opts)


# ---------------------------------------------------------------- Ray: one actor per learner rank


def free_address() -> tuple[str, int]:
    """This node's IP (as Ray sees it, else the loopback) and a TCP port free right now."""
    import socket

    try:
        import ray

        host = ray.util.get_node_ip_address()
    except Exception:  # not inside Ray
        host = "127.0.0.1"
    with socket.socket() as sock:
        sock.bind(("", 0))
        return host, sock.getsockname()[1]


def learner_ranks(cluster: Any) -> int:
    """How many learner ranks a recipe's `cluster` section asks for: one per GPU, else learner_procs."""
    return cluster.learner_gpus if cluster.learner_gpus > 0 else cluster.learner_procs


class LearnerRank:
    """One learner rank inside a Ray actor (one GPU each: Ray sets CUDA_VISIBLE_DEVICES, so LOCAL_RANK is 0).

    `setup` joins the process group and builds the Learner; every other call is the Learner's, and the
    collective ones (train_step, state_dict_for_sync, save, load) must be called on all ranks together.
    """

    def address(self) -> tuple[str, int]:
        return free_address()

    def setup(self, recipe: Any, rank: int, world: int, master: tuple[str, int]) -> int:
        from golong.cluster import _set_threads, build_learner

        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR=master[0], MASTER_PORT=str(master[1]))
        _set_threads(recipe.cluster.torch_threads)
        self.ctx = init_learner_group()
        self.learner = build_learner(recipe)
        return os.getpid()

    def train_step(self, samples: list) -> dict[str, float]:
        return self.learner.train_step(samples)

    def state_dict_for_sync(self) -> dict[str, torch.Tensor]:
        # rank 0: the full weights (CPU); the other ranks: {} (one rank: its plain Learner's, moved to CPU)
        return {k: v.cpu() for k, v in self.learner.state_dict_for_sync().items()}

    def save(self, path: str) -> None:
        self.learner.save(path)

    def load(self, path: str) -> None:
        self.learner.load(path)

    def pid(self) -> int:
        return os.getpid()


class LearnerGroup:
    """N `LearnerRank` actors placed on bundles of a placement group, driven as one learner.

    The same calls as a single learner actor, but each returns rank 0's answer after all ranks finished;
    `state_dict_for_sync()` returns (rank 0's object ref, the others' refs to wait on after use).
    """

    def __init__(self, recipe: Any, placement_group: Any, bundles: Sequence[int], *, cpus: float, gpus: float) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.ray = ray
        self.actors = [
            ray.remote(LearnerRank).options(
                num_cpus=cpus, num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group, placement_group_bundle_index=b),
            ).remote()
            for b in bundles
        ]
        master = ray.get(self.actors[0].address.remote())
        world = len(self.actors)
        ray.get([a.setup.remote(recipe, r, world, master) for r, a in enumerate(self.actors)])

    def _all(self, method: str, *args: Any) -> list[Any]:
        return self.ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def train_step(self, samples: list) -> dict[str, float]:
        ref = self.ray.put(samples)  # stored once, read by every rank
        return self._all("train_step", ref)[0]

    def state_dict_for_sync(self) -> tuple[Any, list[Any]]:
        refs = [a.state_dict_for_sync.remote() for a in self.actors]
        return refs[0], refs[1:]

    def save(self, path: str) -> None:
        self._all("save", path)

    def load(self, path: str) -> None:
        self._all("load", path)

    def kill(self) -> None:
        for a in self.actors:
            self.ray.kill(a, no_restart=True)


# ---------------------------------------------------------------- a learner check you can launch


def synthetic_batch(seed: int, n: int, vocab: int, max_len: int = 24, group: int = 1) -> list:
    """`n` samples of random lengths and advantages of both signs, `group` consecutive samples per
    prompt as in GRPO (for equivalence checks; shared prompts are packed once)."""
    from golong.learner import Sample

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        if i % group == 0:
            p = torch.randint(5, vocab, (int(torch.randint(2, max_len, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(5, vocab, (int(torch.randint(1, max_len, (1,), generator=g)),), generator=g).tolist()
        adv = float(torch.randn(1, generator=g))
        out.append(Sample(p, r, advantage=adv, sampler_logprobs=[-1.0] * len(r), reward_type=f"t{i % 2}"))
    return out


def _check(args: argparse.Namespace) -> None:
    """Build a Learner on this rank, run `steps` train steps on one synthetic batch, write the results (rank 0)."""
    from golong.config import AlgoConfig, ModelConfig, OptimConfig
    from golong.learner import Learner

    ctx = init_learner_group(args.backend)

    def build() -> Learner:
        return Learner(
            ModelConfig(path=args.model, dtype=args.dtype),
            OptimConfig(lr=args.lr, micro_batch_tokens=args.micro_batch_tokens, logprob_chunk=16, weight_decay=0.01,
                        grad_clip=args.grad_clip, master_weights=args.master_weights),
            AlgoConfig(loss_agg=args.loss_agg, kl_coef=args.kl_coef, updates_per_batch=args.updates, dual_clip=3.0),
            total_steps=args.steps, seed=0, device=args.device,
        )

    learner = build()
    vocab = learner.model.get_input_embeddings().weight.shape[0]
    samples = synthetic_batch(args.seed, args.samples, vocab, args.max_len, args.group)
    metrics = [learner.train_step(samples) for _ in range(args.steps)]
    weights: dict[str, torch.Tensor] = {}
    for bucket in (iter_full_state(learner.model, ctx, torch.float32) if ctx else [learner.state_dict_for_sync()]):
        weights.update(bucket)
    resume: dict[str, float] = {}
    if args.check_resume:  # save, load into a fresh learner, take one more step with both
        learner.save(args.check_resume)
        again = build()
        again.load(args.check_resume)
        a, b = learner.train_step(samples), again.train_step(samples)
        wa, wb = learner.state_dict_for_sync(), again.state_dict_for_sync()
        resume = {"loss_diff": abs(a["loss"] - b["loss"]), "step": float(again.step),
                  "weight_diff": max((float((wa[k].float() - wb[k].float()).abs().max()) for k in wa), default=0.0)}
    if ctx is None or ctx.rank == 0:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        keep = ("loss", "pg_loss", "kl", "entropy", "clip_frac", "approx_kl", "grad_norm", "drift", "drift_kl")
        record = {"world": ctx.world if ctx else 1, "metrics": [{k: m[k] for k in keep if k in m} for m in metrics],
                  "resume": resume}
        if args.save_weights:
            torch.save({k: v.float() for k, v in weights.items()}, out.with_suffix(".pt"))
        record["weight_sums"] = {k: float(v.double().sum()) for k, v in weights.items()}
        out.write_text(json.dumps(record, indent=1))
    if ctx is not None:
        dist.barrier()
        dist.destroy_process_group()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m golong.distributed",
                                description="Run learner train steps on a synthetic batch over N ranks (FSDP2) and write loss, grad-norm and weights.")
    p.add_argument("--nproc", type=int, default=1, help="learner ranks on this machine (one per GPU on CUDA)")
    p.add_argument("--model", required=True, help="local HF model folder")
    p.add_argument("--out", required=True, help="result JSON (weights next to it as .pt with --save-weights)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--backend", default=None, help="gloo or nccl (default: by device)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--master-weights", default="model", choices=["model", "optimizer"],
                   help="with bfloat16: float32 model under autocast, or (sharded) float32 shards gathered as bf16")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--samples", type=int, default=7)
    p.add_argument("--group", type=int, default=1, help="samples per prompt (shared prompts are packed once)")
    p.add_argument("--max-len", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--micro-batch-tokens", type=int, default=40)
    p.add_argument("--loss-agg", default="token-mean")
    p.add_argument("--kl-coef", type=float, default=0.0)
    p.add_argument("--updates", type=int, default=1, help="optimizer passes per batch")
    p.add_argument("--save-weights", action="store_true")
    p.add_argument("--check-resume", default=None, help="also save a checkpoint here, load it into a fresh learner and compare one more step")
    p.add_argument("--master-port", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> None:
    """Without RANK in the environment and --nproc > 1: re-launch this module under torchrun (standalone)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if "RANK" in os.environ:
        _check(args)
        # Skip interpreter teardown: gloo's C++ threads can abort the process in static destructors
        # (1 run in ~30 on 2 cores: "terminate called without an active exception") after all work is done.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if args.nproc <= 1:
        _check(args)
        return
    from torch.distributed.run import main as torchrun

    rdzv = [f"--master-port={args.master_port}", "--master-addr=127.0.0.1"] if args.master_port else ["--standalone"]
    # the workers' own options only: torchrun's parser would take --nproc / --master-port as its own
    worker = [a for i, a in enumerate(argv)
              if not a.startswith(("--nproc", "--master-port")) and (i == 0 or argv[i - 1] not in ("--nproc", "--master-port"))]
    torchrun([*rdzv, f"--nproc-per-node={args.nproc}", "-m", "golong.distributed", *worker])


if __name__ == "__main__":
    main()
