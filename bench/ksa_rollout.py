"""Rollout at long context: full attention vs the 3:1 KSA hybrid on the same model shape, both
through golong's engine (StaticEngine: static K/V, CUDA graphs, continuous batching).

Model: Qwen3-0.6B shape (hidden 1024, 28 layers, 16 q / 8 kv heads, head_dim 128, MLP 3072,
vocab 151936, tied embeddings), random weights, bf16, and its KSA conversion (benchutil.ksa_hybrid:
chunk 8, one summary per chunk, 21 layers with a 1024-token window + summaries, 7 full layers).
`--tiny`: a 4-layer toy (chunk 4, windows [2,2,2,1000]) at a 256-token context, for CPU checks.

Measured, at context P = prompt + new tokens (default 32768):
1. decode tokens/s at equal batch B (one prompt, B samples, greedy; the engine's decode clock);
2. the largest batch a fixed decode K/V budget (`--kv-budget-gb`) admits: the engine's own rule,
   budget // bytes of one row's static storage at length P (golong/rollout/kvmem.py counts);
3. end-to-end rollout tokens/s at that batch: prefill + decode of G samples per prompt at T = 1,
   the engine built with the budget (wall clock over one generate call, after a warm-up call).

Run: python bench/ksa_rollout.py --out $OUT/ksa_rollout.json                  (GPU)
     python bench/ksa_rollout.py --device cpu --tiny                          (CPU check)
Imports only torch, transformers, ksa and golong.rollout (no pydantic/ray).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from benchutil import IdTokenizer, free, ksa_hybrid, qwen3_06b_model, sync

from golong.rollout.base import SamplingParams
from golong.rollout.static import StaticEngine


def run_safely(row: dict, key: str, fn) -> None:
    """row[key] = fn(), or row[key + '_error'] when it fails (e.g. out of memory): the rest still runs."""
    try:
        row[key] = fn()
    except Exception as err:  # noqa: BLE001 - record and go on with the other measurements
        row[f"{key}_error"] = f"{type(err).__name__}: {str(err)[:300]}"


def decode_tok_s(model, tok, prompt: list[int], batch: int, new: int, context: int) -> float:
    engine = StaticEngine(model, tok, max_batch=batch, max_len=context, prefill_chunk=32768)
    greedy = SamplingParams(max_new_tokens=new, temperature=0)
    engine.generate([prompt], batch, greedy)  # warm-up (graph capture)
    engine.generate([prompt], batch, greedy)
    return engine.stats["rows_x_steps"] / engine.stats["decode_s"]


def end_to_end(model, tok, prompts, group: int, new: int, context: int, max_batch: int, budget_gb: float, dev: str) -> dict:
    engine = StaticEngine(model, tok, max_batch=max_batch, max_len=context, prefill_chunk=32768, kv_budget_gb=budget_gb)
    params = SamplingParams(max_new_tokens=new, temperature=1.0, seed=0)
    engine.generate(prompts, group, SamplingParams(max_new_tokens=new, temperature=1.0, seed=1))  # warm-up
    sync(dev)
    t0 = time.perf_counter()
    out = engine.generate(prompts, group, params)
    sync(dev)
    seconds = time.perf_counter() - t0
    tokens = sum(len(c.response_ids) for g in out for c in g)
    st = engine.stats
    return {"tok_s": tokens / seconds, "seconds": seconds, "tokens": tokens, "rows": engine.rows,
            "concurrency": st["concurrency"], "kv_gib": st["kv_bytes"] / 1024**3, "prefill_s": st["prefill_s"],
            "decode_s": st["decode_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--context", type=int, default=None, help="prompt + new tokens (default 32768; tiny 256)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 128; tiny 16")
    ap.add_argument("--batches", default="8,32", help="equal batches for part 1")
    ap.add_argument("--group", type=int, default=4, help="samples per prompt in the end-to-end rollout")
    ap.add_argument("--kv-budget-gb", type=float, default=None,
                    help="decode K/V budget (default 40; tiny: what 4 full-attention rows need)")
    ap.add_argument("--max-batch", type=int, default=128, help="cap on the end-to-end batch")
    ap.add_argument("--out", default="bench/results/ksa_rollout.json")
    args = ap.parse_args()
    context = args.context or (256 if args.tiny else 32768)
    new = args.new_tokens or (16 if args.tiny else 128)
    plen = context - new
    dev = args.device
    full, cfg = qwen3_06b_model(args.tiny, dev, tiny_layers=4)
    models = {"full": full, "ksa": ksa_hybrid(full, args.tiny, dev)}
    tok = IdTokenizer(cfg.vocab_size)
    row_bytes = {name: StaticEngine(m, tok, max_len=context).row_bytes(context) for name, m in models.items()}
    budget_gb = args.kv_budget_gb or (4 * row_bytes["full"] / 1024**3 if args.tiny else 40.0)
    gen = torch.Generator().manual_seed(0)
    prompt_pool = torch.randint(0, cfg.vocab_size - 2, (args.max_batch, plen), generator=gen).tolist()
    batches = [int(x) for x in args.batches.split(",")]
    result: dict = {
        "bench": "ksa_rollout", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if dev.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__, "model": "tiny" if args.tiny else "qwen3-0.6b-shape random bf16",
        "ksa": {"chunk": models["ksa"].config.ksa_chunk, "summaries": models["ksa"].config.ksa_summaries,
                "windows": list(models["ksa"].config.ksa_windows)},
        "context": context, "prompt_len": plen, "new_tokens": new, "kv_budget_gb": budget_gb, "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        row: dict = {"model": name, "kv_gib_per_sequence": row_bytes[name] / 1024**3}
        for b in batches:
            run_safely(row, f"decode_tok_s_b{b}", lambda b=b, model=model: decode_tok_s(model, tok, prompt_pool[0], b, new, context))
            free(dev)
        fit = min(args.max_batch, int(budget_gb * 1024**3) // row_bytes[name]) // args.group * args.group
        row["budget_batch"] = fit
        if fit == 0:
            row["e2e_error"] = "the budget does not hold one group"
        else:
            run_safely(row, "e2e", lambda model=model, fit=fit: end_to_end(
                model, tok, prompt_pool[: fit // args.group], args.group, new, context, fit, budget_gb, dev))
            free(dev)
        result["rows"].append(row)
        out.write_text(json.dumps(result, indent=1))
    rows = {r["model"]: r for r in result["rows"]}

    def cell(r: dict, key: str, sub: str | None = None) -> str:
        v = r.get(key)
        v = v.get(sub) if isinstance(v, dict) and sub else v
        return f"{v:.1f}" if isinstance(v, float) else ("err" if f"{key}_error" in r else "-")

    print(f"context {context} (prompt {plen} + {new} new), K/V budget {budget_gb:.3g} GiB")
    dec = " ".join(f"{'dec tok/s B=' + str(b):>14}" for b in batches)
    print(f"{'model':>6} {'KV GiB/seq':>10} {dec} {'budget batch':>12} {'e2e tok/s':>10}")
    for name in ("full", "ksa"):
        r = rows[name]
        cells = " ".join(f"{cell(r, f'decode_tok_s_b{b}'):>14}" for b in batches)
        print(f"{name:>6} {r['kv_gib_per_sequence']:>10.4f} {cells} {r['budget_batch']:>12} {cell(r, 'e2e', 'tok_s'):>10}")
    ratios = {f"decode_b{b}": rows["ksa"].get(f"decode_tok_s_b{b}", 0) / rows["full"][f"decode_tok_s_b{b}"]
              for b in batches if rows["full"].get(f"decode_tok_s_b{b}")}
    ratios["concurrency"] = rows["ksa"]["budget_batch"] / max(1, rows["full"]["budget_batch"])
    if isinstance(rows["full"].get("e2e"), dict) and isinstance(rows["ksa"].get("e2e"), dict):
        ratios["e2e"] = rows["ksa"]["e2e"]["tok_s"] / rows["full"]["e2e"]["tok_s"]
    result["ksa_vs_full"] = ratios
    print("ksa / full: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    for r in result["rows"]:
        for k, v in r.items():
            if k.endswith("_error"):
                print(f"  {r['model']}.{k}: {v}")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
