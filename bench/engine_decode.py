"""Decode speed after a long prompt: plain transformers `generate` vs golong's engine (StaticEngine),
full attention vs the 3:1 KSA hybrid, with the bandwidth floor.

Model: Qwen3-0.6B shape (hidden 1024, 28 layers, 16 q / 8 kv heads, head_dim 128, MLP 3072,
vocab 151936, tied embeddings), random weights, bf16; its KSA form is the same weights converted
(benchutil.ksa_hybrid: 21 layers with a 1024-token window + summaries, 7 full layers). `--tiny`: a
4-layer toy for CPU checks. For each prompt length P and batch B, B rows decode `--new-tokens`
greedy tokens after a P-token prompt (StaticEngine: one prompt with n=B samples, prefilled once;
generate: B copies of the prompt). Only decode is timed:
- generate: time(max_new_tokens=N) - time(max_new_tokens=1), both with min_new_tokens set, over
  B * (N - 1) tokens (transformers' default cache; KSA: its KSACache);
- StaticEngine: its own decode clock (`engine.stats["decode_s"]`, synchronised every step), over the
  rows x steps it decoded; the first call (graph capture) is a warm-up.
Floor: bytes read per step (weights once + each row's K/V at its mean length, kvmem's count) / 4.8 TB/s.
Greedy agreement with `generate` is reported as leading equal tokens; where they part, the reference
forward's top-2 logit gap at that token says whether it was a near tie (bf16 rounding can flip those).

Run: python bench/engine_decode.py --out $OUT/engine_decode.json      (GPU)
     python bench/engine_decode.py --device cpu --tiny                 (CPU smoke test)
Imports only torch, transformers, ksa and golong.rollout (no pydantic/ray/datasets).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from benchutil import IdTokenizer, free, ksa_hybrid, qwen3_06b_model, sync

from golong.rollout.base import SamplingParams
from golong.rollout.kvmem import kv_bytes_per_sequence
from golong.rollout.static import StaticEngine

HBM_BYTES_PER_S = 4.8e12


def generate_decode_s(model, prompt: list[int], batch: int, new: int, device: str) -> tuple[float, list[int]]:
    """(decode seconds, greedy tokens of row 0) of transformers' generate."""
    ids = torch.tensor([prompt] * batch, device=device)
    mask = torch.ones_like(ids)
    tokens: list[int] = []

    def timed(n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=model.config.pad_token_id)
        sync(device)
        tokens[:] = out[0, len(prompt):].tolist()
        return time.perf_counter() - t0

    timed(2)  # warm-up
    full = timed(new)
    greedy = list(tokens)
    return full - timed(1), greedy


def top2_gap(model, ids: list[int], device: str) -> float:
    """Gap between the two largest next-token logits after `ids` (one reference forward)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=device), logits_to_keep=1).logits[0, -1].float()
    top = logits.topk(2).values
    return float(top[0] - top[1])


def floor_s(model, batch: int, prompt_len: int, new: int) -> float:
    """Seconds per step to read the weights once and every row's K/V at its mean length."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv = kv_bytes_per_sequence(model.config, prompt_len + new // 2, next(model.parameters()).element_size())
    return (weights + batch * kv) / HBM_BYTES_PER_S


def fast_decode(model, tok, prompt: list[int], batch: int, new: int, reps: int) -> tuple[dict, list[int]]:
    engine = StaticEngine(model, tok, max_batch=batch, max_len=len(prompt) + new, prefill_chunk=32768)
    greedy = SamplingParams(max_new_tokens=new, temperature=0)
    first = engine.generate([prompt], batch, greedy)[0][0].response_ids  # warm-up: graph capture
    runs = []
    for _ in range(reps):
        engine.generate([prompt], batch, greedy)
        st = engine.stats
        runs.append((st["rows_x_steps"] / st["decode_s"], st["decode_s"] / st["decode_steps"]))
    out = {"tok_s": statistics.median(r[0] for r in runs), "ms_per_step": statistics.median(r[1] for r in runs) * 1e3,
           "prefill_s": engine.stats["prefill_s"], "kv_gib": engine.cache_bytes() / 1024**3}
    return out, first


def measure(row: dict, name: str, model, tok, prompt, batch, new, args) -> None:
    """Fill row[name] with fast / generate numbers for one model at one (P, B)."""
    cell: dict = {"floor_tok_s": batch / floor_s(model, batch, len(prompt), new)}
    row[name] = cell
    fast_tokens: list[int] = []
    try:
        fast, fast_tokens = fast_decode(model, tok, prompt, batch, new, args.reps)
        cell.update({f"fast_{k}": v for k, v in fast.items()})
    except Exception as err:  # noqa: BLE001 - record and go on with the other configurations
        cell["fast_error"] = f"{type(err).__name__}: {str(err)[:300]}"
    free(args.device)
    if args.skip_generate or batch > args.generate_max_batch or batch * len(prompt) > 8 * 32768 + 1:
        cell["generate_skipped"] = True
        return
    try:
        dt, gen_tokens = generate_decode_s(model, prompt, batch, new, args.device)
        cell["generate_tok_s"] = batch * (new - 1) / dt
        cell["generate_ms_per_step"] = dt / (new - 1) * 1e3
        same = next((i for i, (a, b) in enumerate(zip(gen_tokens, fast_tokens, strict=False)) if a != b),
                    min(len(gen_tokens), len(fast_tokens)))
        cell["greedy_equal_leading"] = f"{same}/{len(gen_tokens)}"
        if same < min(len(gen_tokens), len(fast_tokens)):
            cell["diverge_top2_logit_gap"] = top2_gap(model, prompt + gen_tokens[:same], args.device)
        if "fast_tok_s" in cell:
            cell["fast_vs_generate"] = cell["fast_tok_s"] / cell["generate_tok_s"]
    except Exception as err:  # noqa: BLE001
        cell["generate_error"] = f"{type(err).__name__}: {str(err)[:300]}"
    free(args.device)


def fmt(cell: dict, key: str, spec: str = ".0f") -> str:
    return format(cell[key], spec) if key in cell else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--prompt-lens", default=None, help="default 8192,32768 (tiny: 64,256)")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default="full,ksa")
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--generate-max-batch", type=int, default=8, help="plain generate only up to this batch")
    ap.add_argument("--out", default="bench/results/engine_decode.json")
    args = ap.parse_args()
    prompt_lens = [int(x) for x in (args.prompt_lens or ("64,256" if args.tiny else "8192,32768")).split(",")]
    full, cfg = qwen3_06b_model(args.tiny, args.device, tiny_layers=4)
    models = {"full": full}
    if "ksa" in args.models.split(","):
        models["ksa"] = ksa_hybrid(full, args.tiny, args.device)
    if "full" not in args.models.split(","):
        models.pop("full")
    tok = IdTokenizer(cfg.vocab_size)
    new = args.new_tokens
    result = {
        "bench": "engine_decode", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__, "model": "tiny" if args.tiny else "qwen3-0.6b-shape random bf16",
        "ksa_windows": list(models["ksa"].config.ksa_windows) if "ksa" in models else None,
        "new_tokens": new, "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    print(f"{'P':>6} {'B':>3} | {'full: gen':>9} {'fast':>7} {'floor':>7} | {'ksa: gen':>9} {'fast':>7} {'floor':>7} |"
          f" {'fast/gen':>8} {'ksa/full':>8}  (decode tokens/s)")
    for plen in prompt_lens:
        prompt = torch.randint(0, cfg.vocab_size - 2, (plen,), generator=gen).tolist()
        for batch in [int(x) for x in args.batches.split(",")]:
            row: dict = {"prompt_len": plen, "batch": batch}
            for name, model in models.items():
                measure(row, name, model, tok, prompt, batch, new, args)
            f, k = row.get("full", {}), row.get("ksa", {})
            if "fast_tok_s" in f and "fast_tok_s" in k:
                row["ksa_vs_full_fast"] = k["fast_tok_s"] / f["fast_tok_s"]
            result["rows"].append(row)
            out.write_text(json.dumps(result, indent=1))
            print(f"{plen:>6} {batch:>3} | {fmt(f, 'generate_tok_s'):>9} {fmt(f, 'fast_tok_s'):>7} {fmt(f, 'floor_tok_s'):>7} |"
                  f" {fmt(k, 'generate_tok_s'):>9} {fmt(k, 'fast_tok_s'):>7} {fmt(k, 'floor_tok_s'):>7} |"
                  f" {fmt(f, 'fast_vs_generate', '.1f'):>8} {fmt(row, 'ksa_vs_full_fast', '.2f'):>8}", flush=True)
            for name in models:
                errs = {key: v for key, v in row[name].items() if key.endswith("_error")}
                if errs:
                    print(f"       {name}: {errs}")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
