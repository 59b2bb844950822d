"""Rollout at long context: full attention vs the 3:1 KSA hybrid on the same model shape.

Model: Qwen3-0.6B shape (hidden 1024, 28 layers, 16 q / 8 kv heads, head_dim 128, MLP 3072,
vocab 151936, tied embeddings), random weights, bf16. The KSA model is the same weights converted
with ksa.convert_model: chunk 8, one summary per chunk, windows ([128]*3+[16768])*7 (21 layers with
a 1024-token window + summaries, 7 full layers), Triton kernel for the prefill (reference on CPU).
`--tiny`: a 4-layer toy (chunk 4, windows [2,2,2,1000]) at a 256-token context, for CPU checks.

Measured, at context P = prompt + new tokens (default 32768):
1. decode tokens/s at equal batch B (one prompt, B samples, greedy): the transformers engine
   (HFEngine) for both models, golong's FastEngine for full attention (KSA has no fast path yet).
   Decode only: HFEngine time(N new tokens) - time(1 new token), over the tokens that difference
   generated; FastEngine: its own decode clock (stats["decode_s"]).
2. the largest batch a fixed decode K/V budget (`--kv-budget-gb`) admits, from the engine's own
   admission rule (golong/rollout/kvmem.py: budget // bytes per sequence at length P).
3. end-to-end rollout tokens/s at that batch (prefill + decode, sampling at T = 1, G samples per
   prompt): HFEngine with the budget for both models, FastEngine for full attention.

Run: python bench/ksa_rollout.py --out $OUT/ksa_rollout.json                  (GPU)
     python bench/ksa_rollout.py --device cpu --tiny                          (CPU check)
Imports only torch, transformers, ksa and golong.rollout (no pydantic/ray).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from benchutil import IdTokenizer, qwen3_06b_model

import ksa
from golong.rollout.base import SamplingParams
from golong.rollout.fast import FastEngine
from golong.rollout.hf import HFEngine
from golong.rollout.kvmem import kv_bytes_per_sequence


def build_models(tiny: bool, device: str):
    """(full-attention model, its KSA conversion, config) with the same random weights."""
    full, cfg = qwen3_06b_model(tiny, device, tiny_layers=4)
    dtype = next(full.parameters()).dtype
    settings = ksa.KSAConfig(chunk=4, windows=[2, 2, 2, 1000], impl="reference") if tiny else ksa.KSAConfig(
        chunk=8, windows="([128]*3+[16768])*7", impl="triton" if device.startswith("cuda") else "reference")
    hybrid = ksa.convert_model(copy.deepcopy(full), settings).to(device=device, dtype=dtype).eval()
    return full, hybrid, cfg


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def timed_generate(engine, prompts, n: int, params: SamplingParams, device: str) -> tuple[float, int]:
    """(seconds, generated tokens) of one generate call."""
    sync(device)
    t0 = time.perf_counter()
    out = engine.generate(prompts, n, params)
    sync(device)
    return time.perf_counter() - t0, sum(len(c.response_ids) for g in out for c in g)


def hf_decode_tok_s(engine: HFEngine, prompt: list[int], batch: int, new: int, device: str) -> float:
    """Decode-only tokens/s: (tokens(new) - tokens(1)) / (time(new) - time(1)), greedy, one prompt x batch."""
    timed_generate(engine, [prompt], batch, SamplingParams(max_new_tokens=2, temperature=0), device)  # warm-up
    t_n, k_n = timed_generate(engine, [prompt], batch, SamplingParams(max_new_tokens=new, temperature=0), device)
    t_1, k_1 = timed_generate(engine, [prompt], batch, SamplingParams(max_new_tokens=1, temperature=0), device)
    return (k_n - k_1) / max(t_n - t_1, 1e-9)


def fast_decode_tok_s(engine: FastEngine, prompt: list[int], batch: int, new: int) -> float:
    greedy = SamplingParams(max_new_tokens=new, temperature=0)
    engine.generate([prompt], batch, greedy)  # warm-up (graph capture)
    engine.generate([prompt], batch, greedy)
    st = engine.stats
    return st["rows_x_steps"] / st["decode_s"]


def run_safely(row: dict, key: str, fn) -> None:
    """row[key] = fn(), or row[key + '_error'] when it fails (e.g. out of memory): the rest still runs."""
    try:
        row[key] = fn()
    except Exception as err:  # noqa: BLE001 - record and go on with the other measurements
        row[f"{key}_error"] = f"{type(err).__name__}: {str(err)[:300]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--context", type=int, default=None, help="prompt + new tokens (default 32768; tiny 256)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 128; tiny 16")
    ap.add_argument("--batch", type=int, default=8, help="rows at equal batch (part 1)")
    ap.add_argument("--group", type=int, default=4, help="samples per prompt in the end-to-end rollout")
    ap.add_argument("--kv-budget-gb", type=float, default=None,
                    help="decode K/V budget (default 40; tiny: what 4 full-attention rows need)")
    ap.add_argument("--max-batch", type=int, default=256, help="cap on the end-to-end batch")
    ap.add_argument("--skip-fast", action="store_true")
    ap.add_argument("--out", default="bench/results/ksa_rollout.json")
    args = ap.parse_args()
    context = args.context or (256 if args.tiny else 32768)
    new = args.new_tokens or (16 if args.tiny else 128)
    plen = context - new
    dev = args.device
    full, hybrid, cfg = build_models(args.tiny, dev)
    tok = IdTokenizer(cfg.vocab_size)
    elem = next(full.parameters()).element_size()
    seq_bytes = {"full": kv_bytes_per_sequence(full.config, context, elem),
                 "ksa": kv_bytes_per_sequence(hybrid.config, context, elem)}
    budget_gb = args.kv_budget_gb or (4 * seq_bytes["full"] / 1024**3 if args.tiny else 40.0)
    budget = int(budget_gb * 1024**3)
    gen = torch.Generator().manual_seed(0)
    prompt_pool = torch.randint(0, cfg.vocab_size - 2, (args.max_batch, plen), generator=gen).tolist()
    result: dict = {
        "bench": "ksa_rollout", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if dev.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__, "model": "tiny" if args.tiny else "qwen3-0.6b-shape random bf16",
        "ksa": {"chunk": hybrid.config.ksa_chunk, "summaries": hybrid.config.ksa_summaries,
                "windows": list(hybrid.config.ksa_windows)},
        "context": context, "prompt_len": plen, "new_tokens": new, "kv_budget_gb": budget_gb,
        "kv_bytes_per_sequence": seq_bytes, "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, model in (("full", full), ("ksa", hybrid)):
        row: dict = {"model": name, "kv_gib_per_sequence": seq_bytes[name] / 1024**3}
        # 1. decode at equal batch
        hf = HFEngine(model, tok, batch_size=args.batch, device=dev)
        run_safely(row, "hf_decode_tok_s", lambda hf=hf: hf_decode_tok_s(hf, prompt_pool[0], args.batch, new, dev))
        free(dev)
        if name == "full" and not args.skip_fast:
            def fast_decode(model=model):
                eng = FastEngine(model, tok, max_batch=args.batch, max_len=context, device=dev, prefill_chunk=32768)
                return fast_decode_tok_s(eng, prompt_pool[0], args.batch, new)
            run_safely(row, "fast_decode_tok_s", fast_decode)
            free(dev)
        # 2. the batch the budget admits (whole groups), 3. end-to-end rollout at that batch
        fit = min(args.max_batch, budget // seq_bytes[name]) // args.group * args.group
        row["budget_batch"] = fit
        if fit == 0:
            row["e2e_error"] = "the budget does not hold one group"
        else:
            prompts = prompt_pool[: fit // args.group]
            params = SamplingParams(max_new_tokens=new, temperature=1.0, seed=0)
            eng = HFEngine(model, tok, batch_size=args.max_batch, device=dev, kv_budget_gb=budget_gb)

            def e2e(eng=eng, prompts=prompts, params=params):
                seconds, tokens = timed_generate(eng, prompts, args.group, params, dev)
                return {"tok_s": tokens / seconds, "seconds": seconds, "tokens": tokens,
                        "concurrency": eng.stats["concurrency"], "kv_bytes_planned": eng.stats["kv_bytes"],
                        "kv_bytes_peak": eng.stats["kv_bytes_peak"]}
            run_safely(row, "hf_e2e", e2e)
            free(dev)
            if name == "full" and not args.skip_fast:
                def fast_e2e(model=model, prompts=prompts, params=params, fit=fit):
                    f = FastEngine(model, tok, max_batch=fit, max_len=context, device=dev, prefill_chunk=32768)
                    timed_generate(f, prompts[:1], 1, SamplingParams(max_new_tokens=2, seed=1), dev)  # warm-up
                    seconds, tokens = timed_generate(f, prompts, args.group, params, dev)
                    return {"tok_s": tokens / seconds, "seconds": seconds, "tokens": tokens}
                run_safely(row, "fast_e2e", fast_e2e)
                free(dev)
        result["rows"].append(row)
        out.write_text(json.dumps(result, indent=1))
    rows = {r["model"]: r for r in result["rows"]}

    def cell(r: dict, key: str, sub: str | None = None) -> str:
        v = r.get(key)
        v = v.get(sub) if isinstance(v, dict) and sub else v
        return f"{v:.1f}" if isinstance(v, float) else ("err" if f"{key}_error" in r else "-")

    print(f"context {context} (prompt {plen} + {new} new), K/V budget {budget_gb:.3g} GiB, equal batch {args.batch}")
    print(f"{'model':>6} {'KV GiB/seq':>10} {'hf dec tok/s':>12} {'fast dec tok/s':>14} {'budget batch':>12} "
          f"{'hf e2e tok/s':>12} {'fast e2e tok/s':>14}")
    for name in ("full", "ksa"):
        r = rows[name]
        print(f"{name:>6} {r['kv_gib_per_sequence']:>10.4f} {cell(r, 'hf_decode_tok_s'):>12} "
              f"{cell(r, 'fast_decode_tok_s'):>14} {r['budget_batch']:>12} {cell(r, 'hf_e2e', 'tok_s'):>12} "
              f"{cell(r, 'fast_e2e', 'tok_s'):>14}")
    errors = {f"{r['model']}.{k}": v for r in result["rows"] for k, v in r.items() if k.endswith("_error")}
    for k, v in errors.items():
        print(f"  {k}: {v}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
