"""Decode KV-cache memory of a 3:1 hybrid KSA model vs full attention, at 32K and 128K tokens.

Model shape: Qwen3-4B (36 layers, 8 KV heads, head_dim 128, bf16), chunk 8, 1 summary per chunk,
windows ([128]*3+[16768])*9 — the full layers' 16768 chunks (134,144 tokens) cover the context.

How it is measured: a real ksa.KSACache is built for ONE hybrid period (4 layers) with ONE KV head,
filled on CPU by a prefill of (context - 64) tokens and 64 decode steps through the cache's own
prefill/step code, and its allocated K/V tensor bytes are read back. Heads and periods are
independent copies, so the model total is that x 8 heads x 9 periods. The numbers are checked
against the analytic count:
    KSA layer:  ((W+1)*C + (T // C) * S) entries     full layer: T entries
    bytes = entries * 2 (K and V) * kv_heads * head_dim * 2 (bf16)

Run:  python bench/ksa_memory.py      (CPU, ~1 min; writes bench/results/ksa_memory.json)
"""

from __future__ import annotations

import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from ksa.cache import KSACache

LAYERS, KV_HEADS, HEAD_DIM, BYTES = 36, 8, 128, 2
CHUNK, SUMMARIES, WINDOW, FULL_WINDOW = 8, 1, 128, 16768
PERIOD = [WINDOW] * 3 + [FULL_WINDOW]
DECODE = 64


def analytic(context: int) -> dict:
    per_entry = 2 * KV_HEADS * HEAD_DIM * BYTES
    ksa_entries = (WINDOW + 1) * CHUNK + (context // CHUNK) * SUMMARIES
    full_entries = context
    n_ksa = LAYERS * 3 // 4
    return {
        "ksa_layer_entries": ksa_entries,
        "ksa_layer_bytes": ksa_entries * per_entry,
        "full_layer_bytes": full_entries * per_entry,
        "model_bytes": (n_ksa * ksa_entries + (LAYERS - n_ksa) * full_entries) * per_entry,
        "full_model_bytes": LAYERS * full_entries * per_entry,
    }


def measured(context: int) -> dict:
    """Fill a one-head, one-period cache the way decoding does and read its allocation."""
    cache = KSACache(windows=PERIOD, chunk=CHUNK, summaries=SUMMARIES, max_length=context)
    prompt = context - DECODE
    g = torch.Generator().manual_seed(0)
    length = prompt + (prompt // CHUNK) * SUMMARIES
    lengths = torch.tensor([prompt])
    for layer in cache.layers:
        kv = torch.randn(1, 1, length, HEAD_DIM, generator=g).to(torch.bfloat16)
        layer.prefill(kv, kv, lengths, prompt)
    pos = torch.tensor([prompt])
    for _ in range(DECODE):
        cache.begin_step(pos)
        needs_sum = (pos + 1) % CHUNK == 0
        n = 1 + SUMMARIES * int(needs_sum.any())
        q = torch.randn(1, 1, n, HEAD_DIM, generator=g).to(torch.bfloat16)
        for layer in cache.layers:
            layer.step(q, q, q, pos, needs_sum, HEAD_DIM**-0.5)
        pos = pos + 1
    scale = KV_HEADS * (LAYERS // len(PERIOD))
    per_layer = [layer.nbytes() * KV_HEADS for layer in cache.layers]
    return {
        "ksa_layer_bytes": per_layer[0],
        "full_layer_bytes": per_layer[3],
        "model_bytes": cache.nbytes() * scale,
        "ring_slots": cache.layers[0].keys.shape[1],
        "summary_slots": int(cache.layers[0].sum_valid.sum()),
        "layer_kinds": ["full" if layer.full else "ksa" for layer in cache.layers],
    }


def main() -> None:
    rows = []
    for context in (32 * 1024, 128 * 1024):
        t = time.time()
        m, a = measured(context), analytic(context)
        assert m["ksa_layer_bytes"] == a["ksa_layer_bytes"], (m, a)
        assert m["model_bytes"] == a["model_bytes"], (m, a)
        full_model = a["full_model_bytes"]
        rows.append({
            "context": context,
            "ksa_layer_bytes": m["ksa_layer_bytes"],
            "full_layer_bytes": m["full_layer_bytes"],
            "ksa_model_bytes": m["model_bytes"],
            "full_model_bytes": full_model,
            "ratio_per_ksa_layer": m["full_layer_bytes"] / m["ksa_layer_bytes"],
            "ratio_model": full_model / m["model_bytes"],
            "ring_slots": m["ring_slots"],
            "summary_slots": m["summary_slots"],
            "layer_kinds_per_period": m["layer_kinds"],
            "analytic_matches": True,
            "seconds": round(time.time() - t, 1),
        })
    gib = 1024**3
    print(f"{'context':>8} {'KSA layer MiB':>14} {'full layer MiB':>15} {'x/layer':>8} "
          f"{'KSA model GiB':>14} {'full model GiB':>15} {'x/model':>8}")
    for r in rows:
        print(f"{r['context']:>8} {r['ksa_layer_bytes'] / 2**20:>14.1f} {r['full_layer_bytes'] / 2**20:>15.1f} "
              f"{r['ratio_per_ksa_layer']:>8.2f} {r['ksa_model_bytes'] / gib:>14.2f} "
              f"{r['full_model_bytes'] / gib:>15.2f} {r['ratio_model']:>8.2f}")
    out = Path(__file__).parent / "results" / "ksa_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "what": "decode KV cache bytes, Qwen3-4B shape, 3:1 hybrid KSA (W=128 chunks, C=8, S=1) vs full attention",
        "method": "real KSACache allocation for 1 period x 1 KV head after prefill(context-64) + 64 decode steps, "
                  "scaled x8 heads x9 periods; equal to the analytic count",
        "machine": platform.platform(), "torch": torch.__version__, "date": date.today().isoformat(),
        "shape": {"layers": LAYERS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "dtype": "bfloat16",
                  "chunk": CHUNK, "summaries": SUMMARIES, "windows": "([128]*3+[16768])*9"},
    }
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
