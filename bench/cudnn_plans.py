"""What a new sequence length costs the shared-prompt pieces (ksa.pieces) on CUDA.

cuDNN builds an execution plan for each new attention shape; the learner's pieces take new lengths
every step (prompt and response lengths). Per kernel (cuDNN, flash) and piece kind, this times one
forward + backward at a length not seen before (plan build included) and again at the same length,
for several lengths, and prints the medians (ms) and their difference: the cost of a new shape.

    python bench/cudnn_plans.py --out plans.json
    TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 python bench/cudnn_plans.py --out plans_ragged.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from ksa.pieces import _attention, _attention_backward

PIECES = {  # kind -> (query length, key length, causal) at offset i: new lengths each time
    "own 2K causal": lambda i: (1900 + 7 * i, 1900 + 7 * i, True),
    "cross 16K x 30K": lambda i: (16000 + 3 * i, 30000 + 5 * i, False),
    "prompt 30K causal": lambda i: (30000 + 5 * i, 30000 + 5 * i, True),
}


def _fwd_bwd_ms(lq: int, lk: int, causal: bool, heads: int = 16, dim: int = 128) -> float:
    q = torch.randn(1, lq, heads, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k, v = (torch.randn(1, lk, heads, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(2))
    torch.cuda.synchronize()
    start = time.perf_counter()
    out, lse, how = _attention(q, k, v, causal, dim**-0.5)
    _attention_backward(torch.ones_like(out), q, k, v, out, lse, how, causal, dim**-0.5)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, default=6, help="new lengths per piece kind")
    ap.add_argument("--out", default="bench/results/cudnn_plans.json")
    args = ap.parse_args()
    _fwd_bwd_ms(256, 256, True)  # CUDA context, cuDNN handle
    rows = []
    for kernel in ("cudnn", "flash"):
        torch.backends.cuda.enable_cudnn_sdp(kernel == "cudnn")
        for name, shape in PIECES.items():
            first, again = [], []
            for i in range(1, args.lengths + 1):
                first.append(_fwd_bwd_ms(*shape(i)))
                again.append(_fwd_bwd_ms(*shape(i)))
            row = {"kernel": kernel, "piece": name, "new_ms": statistics.median(first), "seen_ms": statistics.median(again)}
            row["new_shape_cost_ms"] = row["new_ms"] - row["seen_ms"]
            rows.append(row)
            print(f"{kernel:6s} {name:18s} new {row['new_ms']:8.2f} ms  seen {row['seen_ms']:8.2f} ms  "
                  f"cost of a new shape {row['new_shape_cost_ms']:8.2f} ms", flush=True)
    doc = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
           "avoid_recompile": os.environ.get("TORCH_CUDNN_SDPA_AVOID_RECOMPILE", ""), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
