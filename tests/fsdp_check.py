"""A learner check you can launch: train steps on a synthetic batch over N ranks (FSDP2), results as JSON.

    python -m tests.fsdp_check --nproc 2 --model DIR --out res.json    (from the repository root)

Without RANK in the environment and --nproc > 1 it re-launches itself under torchrun; --nproc 1 runs
the plain single-process Learner. tests/test_fsdp.py compares the two.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from golong.config import AlgoConfig, ModelConfig, OptimConfig
from golong.distributed import init_learner_group, iter_full_state
from golong.learner import Learner, Sample


def synthetic_batch(seed: int, n: int, vocab: int, max_len: int = 24, group: int = 1) -> list:
    """`n` samples of random lengths and advantages of both signs, `group` consecutive samples per
    prompt as in GRPO, with their group id (for equivalence checks; a group's prompt is packed once)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        if i % group == 0:
            p = torch.randint(5, vocab, (int(torch.randint(2, max_len, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(5, vocab, (int(torch.randint(1, max_len, (1,), generator=g)),), generator=g).tolist()
        adv = float(torch.randn(1, generator=g))
        out.append(Sample(p, r, advantage=adv, sampler_logprobs=[-1.0] * len(r), reward_type=f"t{i % 2}", group_id=i // group))
    return out


def _check(args: argparse.Namespace) -> None:
    """Build a Learner on this rank, run `steps` train steps on one synthetic batch, write the results (rank 0)."""
    ctx = init_learner_group(args.backend)

    def build() -> Learner:
        return Learner(
            ModelConfig(path=args.model, dtype=args.dtype),
            OptimConfig(lr=args.lr, micro_batch_tokens=args.micro_batch_tokens, logprob_chunk=16, weight_decay=0.01,
                        grad_clip=args.grad_clip, master_weights=args.master_weights),
            AlgoConfig(loss_agg=args.loss_agg, kl_coef=args.kl_coef, updates_per_batch=args.updates, dual_clip=3.0),
            seed=0, device=args.device,
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
    p = argparse.ArgumentParser(prog="python -m tests.fsdp_check",
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
    torchrun([*rdzv, f"--nproc-per-node={args.nproc}", "-m", "tests.fsdp_check", *worker])


if __name__ == "__main__":
    main()
