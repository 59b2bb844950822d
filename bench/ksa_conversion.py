"""KSA conversion quality: the replication's trained full-attention model turned into the 3:1 KSA
hybrid by self-distillation (`golong ksa convert`, i.e. ksa.convert.self_distill), held-out accuracy
before and after, and what the conversion cost.

Phases (results.json is rewritten after each, so a run cut short keeps the phases it finished):
  1. teacher: DIR/full written by ksa_replication.py --save-models; held-out accuracy by length
     (ksa_replication.evaluate: teacher-forced, full difficulty, the replication's eval draws);
  2. converted, not distilled: ksa.convert_model with the replication's KSA windows (summary embedding
     = the mean token embedding); the same evaluation: what the summaries and windows cost untrained;
  3. distillation text: `--text-seqs` sequences of the replication's task mix at `--seq-len` tokens
     (full difficulty, a seed no evaluation uses), written as token names; the model's word-level
     tokenizer maps them back to the same ids;
  4. the number of steps: a few distill_loss forward + backward passes are timed, and steps =
     budget_s / seconds per step (within [--min-steps, --max-steps]), `--steps` overrides;
  5. ksa.convert.self_distill(teacher dir, out, KSAConfig(chunk 8, the windows), DistillConfig(steps,
     joint_steps, seq_len, batch_size, lr_summary, lr_joint)): summary-only steps, then all
     parameters (loss = CE + 5 KL(student || teacher) + 5 clamped attention-output MSE);
  6. after: the distilled student's held-out accuracy; kept = after / teacher per length and task.

Why a joint stage of 3/4 of the steps at lr 3e-4 (the CLI's defaults are 1/4 at 1e-5): the default
KSA config trains only the summary embedding (`hidden` numbers) in stage 1, which cannot move
retrieval done by a full-attention head in a layer that becomes a 128-token window; at 4B and 85B
tokens the report's recipe has the time to do that in stage 2, here a few hundred steps must.

Run (GPU):   bench/run_h200.sh ksaconv   (--models /tmp/ksa_models --out $OUT/conv --budget-s 300; on an H100,
             2026-12-05: 849 steps, 336 s with the evals, bench/results/h100_2026-12-05c/)
CPU pilot:   PYTHONPATH=. python bench/ksa_conversion.py --pilot --models DIR --out DIR/conv --budget-s 120
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ksa_replication, also when imported by tests

import ksa_replication as rep  # noqa: E402

TEXT_SEED = 2_000_003  # distillation text: a stream neither training nor evaluation uses


def distill_text(path: Path, seqs: int, length: int) -> int:
    """Write `seqs` task sequences of `length` tokens (full difficulty) as space-separated token names;
    returns the number of tokens."""
    names = rep.token_names()
    rng = np.random.default_rng(TEXT_SEED)
    lines = []
    for start in range(0, seqs, 64):
        ids = rep.make_batch(rng, min(64, seqs - start), length, rep.queries_for(length)).ids
        lines += [" ".join(names[i] for i in row) for row in ids.tolist()]
    path.write_text("\n".join(lines) + "\n")
    return seqs * length


def eval_plan(args) -> rep.Plan:
    lengths = [int(n) for n in args.eval_lengths.split(",")]
    return rep.Plan("pilot" if args.pilot else "default", [(lengths[0], rep.MAX_PAIRS, 1.0)], 1, lengths[0],
                    lengths, args.eval_rows, 16384 if args.pilot else 131072)


def ksa_settings(teacher, args):
    import ksa

    return ksa.KSAConfig(chunk=8, summaries=1, windows=rep.hybrid_windows(teacher.config.num_hidden_layers, args.window),
                         impl=args.impl)


def time_steps(teacher, settings, cfg, device: str, text_ids: torch.Tensor, n: int = 3) -> float:
    """Seconds per distillation step (distill_loss forward + backward on a throwaway student with every
    parameter trainable, i.e. the joint stage's cost, the dearer one; after one untimed step that
    compiles the kernels); the optimizer step is not timed (it is small here)."""
    import copy

    from ksa.convert import distill_loss, sample_batch
    from ksa.modeling import convert_model

    student = convert_model(copy.deepcopy(teacher), settings).to(device).train().requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(n + 1):
        rep.sync(device)
        t = time.perf_counter()
        loss, _ = distill_loss(student, teacher, sample_batch(text_ids, cfg.batch_size, cfg.seq_len, gen).to(device), cfg)
        loss.backward()
        rep.sync(device)
        if i:
            times.append(time.perf_counter() - t)
    del student
    return float(np.median(times))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="folder written by ksa_replication.py --save-models (uses DIR/full)")
    ap.add_argument("--out", default="bench/results/ksa_conversion", help="folder for results.json")
    ap.add_argument("--student-dir", default=None, help="where self_distill saves the student (default: a temp folder)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pilot", action="store_true", help="the CPU pilot's scale (windows of 4 chunks, eval 256-2K, 512-token text)")
    ap.add_argument("--budget-s", type=float, default=100.0, help="seconds of distillation (sets the number of steps)")
    ap.add_argument("--steps", type=int, default=None, help="distillation steps (overrides --budget-s)")
    ap.add_argument("--min-steps", type=int, default=20)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--joint-frac", type=float, default=0.75, help="share of the steps that train all parameters")
    ap.add_argument("--lr-summary", type=float, default=1e-3)
    ap.add_argument("--lr-joint", type=float, default=3e-4)
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per distillation sequence (default 4096; pilot 512)")
    ap.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 4; pilot 4)")
    ap.add_argument("--text-seqs", type=int, default=None, help="distillation sequences (default 256; pilot 256)")
    ap.add_argument("--window", type=int, default=None, help="KSA window in chunks (default 16, as the replication; pilot 4)")
    ap.add_argument("--eval-lengths", default=None, help="comma-separated (default 1024..32768; pilot 256..2048)")
    ap.add_argument("--eval-rows", type=int, default=32)
    ap.add_argument("--impl", default=None, help="KSA kernel (default triton on CUDA, reference on CPU)")
    args = ap.parse_args(argv)
    for key, gpu, pilot in (("seq_len", 4096, 512), ("batch_size", 4, 4), ("text_seqs", 256, 256), ("window", 16, 4),
                            ("eval_lengths", "1024,2048,4096,8192,16384,32768", "256,512,1024,2048")):
        if getattr(args, key) is None:
            setattr(args, key, pilot if args.pilot else gpu)
    args.impl = args.impl or ("triton" if args.device.startswith("cuda") else "reference")
    return args


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(argv))


def _evaluate(model, plan, device: str, result: dict, key: str, path: Path) -> None:
    t = time.perf_counter()
    result[key] = {"accuracy": rep.evaluate(model, plan, device)}
    result[key]["eval_s"] = time.perf_counter() - t
    rep.write_json(path, result)
    print(f"{key}: " + " ".join(f"{n}:{a['all']:.2f}" for n, a in result[key]["accuracy"].items()), flush=True)


def run(args: argparse.Namespace) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ksa
    from ksa.convert import DistillConfig, self_distill, token_stream

    teacher_dir = Path(args.models) / "full"
    if not (teacher_dir / "config.json").is_file():
        sys.exit(f"{teacher_dir} holds no saved model; run ksa_replication.py --save-models {args.models} first")
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # self_distill runs float32 weights; TF32 matmuls on the GPU
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    plan = eval_plan(args)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).to(args.device)
    settings = ksa_settings(teacher, args)
    result = {"bench": "ksa_conversion", "scale": rep.scale(argparse.Namespace(smoke=False, pilot=args.pilot, device=args.device)),
              "machine": rep.machine_info(args.device), "teacher": str(teacher_dir),
              "config": {k: v for k, v in vars(args).items() if k not in ("out",)},
              "ksa": settings.to_dict() | {"windows": settings.layer_windows(teacher.config.num_hidden_layers)},
              "status": "evaluating the teacher"}
    t_start = time.perf_counter()
    _evaluate(teacher, plan, args.device, result, "teacher", path)
    _evaluate(ksa.convert_model(teacher, settings), plan, args.device, result, "converted_undistilled", path)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "distill.txt"
        n_text = distill_text(text, args.text_seqs, args.seq_len)
        cfg = DistillConfig(steps=1, seq_len=args.seq_len, batch_size=args.batch_size, lr_summary=args.lr_summary,
                            lr_joint=args.lr_joint, checkpoint_every=10**9)
        ids = token_stream(AutoTokenizer.from_pretrained(teacher_dir), text, args.seq_len, 0)
        step_s = time_steps(teacher.eval().requires_grad_(False), settings, cfg, args.device, ids.to(args.device))
        steps = args.steps or int(min(args.max_steps, max(args.min_steps, args.budget_s / step_s)))
        cfg.steps, cfg.joint_steps = steps, int(round(steps * args.joint_frac))
        result["distill"] = {"steps": steps, "joint_steps": cfg.joint_steps, "seq_len": cfg.seq_len,
                             "batch_size": cfg.batch_size, "text_tokens": n_text, "timed_step_s": step_s,
                             "tokens": steps * cfg.seq_len * cfg.batch_size}
        result["status"] = "distilling"
        rep.write_json(path, result)
        print(f"distilling {steps} steps ({cfg.joint_steps} joint), {step_s:.3f}s per step timed", flush=True)
        del teacher
        student_dir = Path(args.student_dir or Path(tmp) / "student")
        t = time.perf_counter()
        student, history = self_distill(teacher_dir, student_dir, settings, cfg, text_file=text, device=args.device,
                                        progress=False)
        result["distill"].update(wall_s=time.perf_counter() - t, history=history[:: max(1, len(history) // 200)],
                                 final=history[-1] if history else None)
        rep.write_json(path, result)
        _evaluate(student, plan, args.device, result, "distilled", path)
    result["kept"] = kept(result["teacher"]["accuracy"], result["distilled"]["accuracy"])
    result["status"], result["total_s"] = "done", time.perf_counter() - t_start
    rep.write_json(path, result)
    print_table(result)
    return result


def kept(before: dict, after: dict) -> dict:
    """after / before per length and task (None where the teacher scores 0)."""
    return {n: {t: (after[n][t] / a if a > 0 else None) for t, a in accs.items()} for n, accs in before.items()}


def print_table(result: dict) -> None:
    lengths = list(result["teacher"]["accuracy"])
    for task in ("all", *rep.TASKS):
        print(f"\nheld-out accuracy, {task}")
        print(f"{'model':>22} " + " ".join(f"{n:>7}" for n in lengths))
        for key in ("teacher", "converted_undistilled", "distilled"):
            if key in result:
                print(f"{key:>22} " + " ".join(f"{result[key]['accuracy'][n][task]:>7.3f}" for n in lengths))
    d = result.get("distill", {})
    print(f"\ndistillation: {d.get('steps')} steps ({d.get('joint_steps')} joint) of {d.get('batch_size')} x "
          f"{d.get('seq_len')} tokens in {d.get('wall_s', float('nan')):.1f}s")


if __name__ == "__main__":
    main()
