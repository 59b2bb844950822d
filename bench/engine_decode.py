"""Decode speed after a long prompt: plain transformers `generate` vs FastEngine, with the bandwidth floor.

Model: Qwen3-0.6B shape (hidden 1024, 28 layers, 16 q / 8 kv heads, head_dim 128, MLP 3072,
vocab 151936, tied embeddings), random weights, bf16 (`--tiny`: a 2-layer toy for CPU debugging).
For each prompt length P and batch B, B rows decode `--new-tokens` greedy tokens after a P-token
prompt (FastEngine: one prompt with n=B samples, prefilled once; generate: B copies of the prompt).
Only decode is timed:
- generate: time(max_new_tokens=N) - time(max_new_tokens=1), both with min_new_tokens set, over
  B * (N - 1) tokens (transformers' default cache);
- FastEngine: its own decode clock (`engine.stats["decode_s"]`, synchronised every step), over the
  rows x steps it decoded; the first call (graph capture) is a warm-up.
Floor: bytes read per step (weights once + each row's K/V at its mean length) / 4.8 TB/s (H200 HBM3e).
KSA policies are not on the fast path yet (FastEngine falls back to the transformers engine), so
they are not benchmarked here.

Run: python bench/engine_decode.py --out $OUT/engine_decode.json      (GPU)
     python bench/engine_decode.py --device cpu --tiny                 (CPU smoke test)
Imports only torch, transformers and golong.rollout.{base,fast} (no pydantic/ray/datasets).
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
from benchutil import IdTokenizer, qwen3_06b_model

from golong.rollout.base import SamplingParams
from golong.rollout.fast import FastEngine

HBM_BYTES_PER_S = 4.8e12


def build_model(tiny: bool, device: str):
    return qwen3_06b_model(tiny, device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def hf_decode_s(model, prompt: list[int], batch: int, new: int, device: str) -> tuple[float, list[int]]:
    """(decode seconds, greedy tokens of row 0)."""
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


def floor_s(model, cfg, batch: int, prompt_len: int, new: int) -> float:
    """Seconds per step to read the weights once and every row's K/V at its mean length."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * next(model.parameters()).element_size()
    return (weights + batch * (prompt_len + new / 2) * per_token) / HBM_BYTES_PER_S


COLUMNS = (("generate_tok_s", 9), ("fast_tok_s", 9), ("fast_eager_tok_s", 10), ("fast_nosplit_tok_s", 12),
           ("floor_tok_s", 9))


def fmt(row: dict, key: str) -> str:
    return f"{row[key]:.0f}" if key in row else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--prompt-lens", default="8192,32768")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--mem-limit-gb", type=float, default=110.0)
    ap.add_argument("--out", default="bench/results/engine_decode.json")
    args = ap.parse_args()
    if args.tiny and args.prompt_lens == "8192,32768":
        args.prompt_lens = "64,256"
    model, cfg = build_model(args.tiny, args.device)
    tok = IdTokenizer(cfg.vocab_size)
    new = args.new_tokens
    result = {
        "bench": "engine_decode", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__, "model": "tiny" if args.tiny else "qwen3-0.6b-shape random bf16",
        "new_tokens": new, "rows": [],
        "notes": "tokens/s over decode only; KSA not benchmarked (no fast path for KSA yet)",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    per_token_kv = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 2
    gen = torch.Generator().manual_seed(0)
    print(f"{'P':>6} {'B':>3} " + " ".join(f"{k.removesuffix('_tok_s'):>{w}}" for k, w in COLUMNS) + "  speedup")
    for plen in [int(x) for x in args.prompt_lens.split(",")]:
        prompt = torch.randint(0, cfg.vocab_size - 2, (plen,), generator=gen).tolist()
        for batch in [int(x) for x in args.batches.split(",")]:
            row: dict = {"prompt_len": plen, "batch": batch}
            static_gb = batch * (plen + new) * per_token_kv / 1e9
            if static_gb > args.mem_limit_gb:
                row["skipped"] = f"static KV {static_gb:.0f} GB > {args.mem_limit_gb:.0f} GB"
                result["rows"].append(row)
                print(f"{plen:>6} {batch:>3} skipped ({row['skipped']})")
                continue
            fl = floor_s(model, cfg, batch, plen, new)
            row["floor_ms_per_step"] = fl * 1e3
            row["floor_tok_s"] = batch / fl
            for label, graphs, split in (("fast", True, True), ("fast_eager", False, True), ("fast_nosplit", True, False)):
                if label != "fast" and batch != 1:
                    continue
                try:
                    engine = FastEngine(model, tok, max_batch=batch, max_len=plen + new, cuda_graphs=graphs,
                                        prefill_chunk=32768)
                    engine.split_pv = split
                    greedy = SamplingParams(max_new_tokens=new, temperature=0)
                    first = engine.generate([prompt], batch, greedy)[0][0].response_ids  # warm-up: capture
                    row.setdefault("fast_tokens_row0", first)
                    runs = []
                    for _ in range(args.reps):
                        engine.generate([prompt], batch, greedy)
                        st = engine.stats
                        runs.append((st["rows_x_steps"] / st["decode_s"], st["decode_s"] / st["decode_steps"]))
                    row[f"{label}_tok_s"] = statistics.median(r[0] for r in runs)
                    row[f"{label}_ms_per_step"] = statistics.median(r[1] for r in runs) * 1e3
                    row[f"{label}_prefill_s"] = engine.stats["prefill_s"]
                except Exception as err:  # noqa: BLE001 - record and go on with the other configurations
                    row[f"{label}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
                engine = None  # free the static cache and graphs before the next configuration
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
            if not args.skip_hf:
                if batch * plen > 8 * 32768 + 1:
                    row["generate_skipped"] = "prompt tokens x batch > 256K (dynamic cache + prefill memory)"
                else:
                    try:
                        dt, hf_tokens = hf_decode_s(model, prompt, batch, new, args.device)
                        fast_tokens = row.pop("fast_tokens_row0", [])
                        same = next((i for i, (a, b) in enumerate(zip(hf_tokens, fast_tokens, strict=False)) if a != b),
                                    min(len(hf_tokens), len(fast_tokens)))
                        row["greedy_tokens_equal_generate"] = f"{same}/{len(hf_tokens)} leading tokens"
                        row["generate_tok_s"] = batch * (new - 1) / dt
                        row["generate_ms_per_step"] = dt / (new - 1) * 1e3
                    except Exception as err:  # noqa: BLE001
                        row["generate_error"] = f"{type(err).__name__}: {str(err)[:300]}"
                    if args.device.startswith("cuda"):
                        torch.cuda.empty_cache()
            row.pop("fast_tokens_row0", None)
            if "generate_tok_s" in row and "fast_tok_s" in row:
                row["speedup"] = row["fast_tok_s"] / row["generate_tok_s"]
            result["rows"].append(row)
            out.write_text(json.dumps(result, indent=1))
            cells = " ".join(f"{fmt(row, k):>{w}}" for k, w in COLUMNS)
            print(f"{plen:>6} {batch:>3} {cells} {row.get('speedup', 0):>7.1f}x", flush=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
