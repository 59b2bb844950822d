"""Rollout engines side by side: generated tokens/s of vLLM vs golong's static engine (column `hf`, its
old name: StaticEngine) and the transformers decode loop (column `plain`: LoopEngine) on the same model, prompts and lengths, plus the time of one
weight sync (`load_weights` of a full state dict).

Prompts are random token ids (no special tokens) of `--prompt-len` tokens; every prompt gets G samples
of up to `--new-tokens` tokens at temperature 1 (EOS may end one early: tokens/s counts the tokens
actually generated). Each engine is warmed up once, then timed over `--repeats` calls (best call
reported). golong's engines run first: an in-process vLLM engine pins torch to one thread.

Run (needs vllm, e.g. the CPU venv from scripts/setup_vllm_cpu.sh):
    .venv-vllm/bin/python bench/rollout_engines.py --models tiny,smollm2-135m
Writes bench/results/rollout_engines.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from golong.rollout.base import SamplingParams
from golong.rollout.loop import LoopEngine
from golong.rollout.static import StaticEngine

ROOT = Path(__file__).resolve().parents[1]


def model_dir(name: str, tmp: Path) -> Path:
    if name == "tiny":
        import sys

        sys.path.insert(0, str(ROOT))
        from tests.tiny import save_tiny

        return save_tiny(tmp / "tiny", arch="qwen3")
    from golong.models import resolve_model_path

    return Path(resolve_model_path(name))


def make_prompts(tokenizer, count: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    pool = [i for i in range(len(tokenizer)) if i not in special]
    return [[rng.choice(pool) for _ in range(length)] for _ in range(count)]


def time_generate(engine, prompts, group: int, params: SamplingParams, repeats: int) -> dict:
    engine.generate(prompts[:1], 1, SamplingParams(max_new_tokens=4, seed=99))  # warm-up
    best = None
    for r in range(repeats):
        t0 = time.perf_counter()
        out = engine.generate(prompts, group, SamplingParams(**{**params.__dict__, "seed": params.seed + r}))
        dt = time.perf_counter() - t0
        tokens = sum(len(c.response_ids) for g in out for c in g)
        if best is None or tokens / dt > best["tokens_per_s"]:
            best = {"seconds": round(dt, 3), "generated_tokens": tokens, "tokens_per_s": round(tokens / dt, 1)}
    return best


def time_sync(engine, state: dict, repeats: int) -> float:
    times = []
    for r in range(repeats):
        noisy = {k: v + 1e-3 * (r + 1) * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
        t0 = time.perf_counter()
        engine.load_weights(noisy)
        times.append(time.perf_counter() - t0)
    engine.load_weights(state)
    return round(sorted(times)[len(times) // 2], 4)


def bench_model(name: str, args, tmp: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from golong.rollout.vllm import VLLMEngine

    path = model_dir(name, tmp)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    prompts = make_prompts(tok, args.prompts, args.prompt_len)
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, seed=0)
    row: dict = {"model": name, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                 "prompts": args.prompts, "group": args.group, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}

    rows = args.prompts * args.group
    for label, engine in (("plain", LoopEngine(model, tok, batch_size=rows)),
                          ("hf", StaticEngine(model, tok, max_batch=rows, max_len=args.prompt_len + args.new_tokens))):
        row[label] = time_generate(engine, prompts, args.group, params, args.repeats)
        row[label]["sync_s"] = time_sync(engine, state, args.repeats)
        print(f"[{name}] {label}: {row[label]}", flush=True)
    if args.skip_vllm:
        return row

    t0 = time.perf_counter()
    v = VLLMEngine(path, tok, max_model_len=args.prompt_len + args.new_tokens, dtype="float32", work_dir=tmp / f"vllm-{name}")
    startup = time.perf_counter() - t0
    row["vllm"] = time_generate(v, prompts, args.group, params, args.repeats)
    row["vllm"]["sync_s"] = time_sync(v, state, args.repeats)
    row["vllm"].update(startup_s=round(startup, 1), sync_method=v.sync_method)
    print(f"[{name}] vllm: {row['vllm']}", flush=True)
    row["vllm_vs_hf"] = round(row["vllm"]["tokens_per_s"] / row["hf"]["tokens_per_s"], 2)
    del v
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,smollm2-135m")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-vllm", action="store_true", help="golong's engines only (no vllm needed)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rollout_engines.json"))
    args = ap.parse_args()
    vllm = None if args.skip_vllm else __import__("vllm")

    rows = []
    with tempfile.TemporaryDirectory(prefix="golong-bench-") as tmp:
        for name in args.models.split(","):
            rows.append(bench_model(name.strip(), args, Path(tmp)))
    result = {
        "date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_interop_threads()} interop / {len(__import__('os').sched_getaffinity(0))} CPUs",
        "torch": torch.__version__, "vllm": vllm.__version__ if vllm else "not run", "dtype": "float32", "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'model':<14}{'P x G':>7}{'prompt':>8}{'new':>5}  tokens/s (sync s): plain / hf / vllm")
    for r in rows:
        cells = " / ".join(f"{r[k]['tokens_per_s']} ({r[k]['sync_s']})" if k in r else "not run" for k in ("plain", "hf", "vllm"))
        print(f"{r['model']:<14}{str(r['prompts']) + 'x' + str(r['group']):>7}{r['prompt_len']:>8}{r['new_tokens']:>5}  {cells}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
