"""Benchmark: a decode step's weight GEMMs, each projection alone vs q/k/v and gate/up fused.

    python bench/decode_gemm.py [--shapes 0.6b 1.7b] [--rows 16 32 64] [--out F.json]
    python bench/decode_gemm.py --device cpu --shapes tiny --rows 4 --reps 2        (smoke)

A decode step multiplies M = rows tokens (one per sequence) by every weight of the model, so its GEMMs
are M x K x N with M small: the time should be the weights' bytes over HBM bandwidth. Per shape and M,
every decoder layer's projections (distinct weights per layer, as in the model, so nothing is served
from L2) run as F.linear in a loop over the layers:
- separate: q, k, v, o, gate, up, down (7 GEMMs a layer; how the engine runs a transformers model)
- fused:    qkv (one weight [q+k+v, hidden]), o, gate_up (one weight [2 x intermediate, hidden]), down
On a GPU the loop is captured in one CUDA graph and timed over replays (CUDA events), so launch
overhead is what a captured decode step pays, no more. Reports microseconds per layer, the weights'
bytes over time (TB/s) and the speed-up separate / fused. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from benchutil import graph_time, print_rows, save_rows

# hidden, q width (heads x head_dim), k / v width (kv heads x head_dim), intermediate, layers
SHAPES = {"tiny": (256, 256, 128, 512, 2), "0.6b": (1024, 2048, 1024, 3072, 28), "1.7b": (2048, 2048, 1024, 6144, 28),
          "4b": (2560, 4096, 1024, 9728, 36)}


def layer_weights(shape: str, dtype, device: str, gen: torch.Generator) -> list[dict]:
    hidden, qw, kvw, inter, layers = SHAPES[shape]

    def w(n: int, k: int) -> torch.Tensor:
        return (torch.randn(n, k, generator=gen, device=device) * k**-0.5).to(dtype)

    out = []
    for _ in range(layers):
        q, k, v, o = w(qw, hidden), w(kvw, hidden), w(kvw, hidden), w(hidden, qw)
        gate, up, down = w(inter, hidden), w(inter, hidden), w(hidden, inter)
        out.append({"q": q, "k": k, "v": v, "o": o, "gate": gate, "up": up, "down": down,
                    "qkv": torch.cat([q, k, v]), "gate_up": torch.cat([gate, up])})
    return out


def separate(x: torch.Tensor, layers: list[dict]) -> torch.Tensor:
    for w in layers:
        q, _k, _v = F.linear(x, w["q"]), F.linear(x, w["k"]), F.linear(x, w["v"])
        h = x + F.linear(q, w["o"])  # (k and v unused: nothing here removes the kernels that make them)
        x = h + F.linear(F.silu(F.linear(h, w["gate"])) * F.linear(h, w["up"]), w["down"])
    return x


def fused(x: torch.Tensor, layers: list[dict]) -> torch.Tensor:
    for w in layers:
        q, _k, _v = F.linear(x, w["qkv"]).split([w["q"].shape[0], w["k"].shape[0], w["v"].shape[0]], -1)
        h = x + F.linear(q, w["o"])
        gate, up = F.linear(h, w["gate_up"]).chunk(2, -1)
        x = h + F.linear(F.silu(gate) * up, w["down"])
    return x


def case(shape: str, m: int, layers: list[dict], dtype, device: str, reps: int) -> dict:
    hidden = SHAPES[shape][0]
    x = torch.randn(m, hidden, device=device).to(dtype) * 0.1
    weight_bytes = sum(w[n].numel() * w[n].element_size() for w in layers for n in ("q", "k", "v", "o", "gate", "up", "down"))
    err = float((separate(x, layers).float() - fused(x, layers).float()).abs().max())
    row = {"shape": shape, "rows": m, "layers": len(layers), "weight_mib": weight_bytes / 2**20, "max_diff": err}
    for name, fn in (("separate", separate), ("fused", fused)):
        s = graph_time(lambda fn=fn: fn(x, layers), reps, device)
        row[f"{name}_us_per_layer"] = s / len(layers) * 1e6
        row[f"{name}_tbs"] = weight_bytes / s / 1e12
    row["speedup"] = row["separate_us_per_layer"] / row["fused_us_per_layer"]
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["0.6b", "1.7b"])
    ap.add_argument("--rows", type=int, nargs="+", default=[16, 32, 64], help="M: sequences decoding together")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    gen = torch.Generator(device=args.device).manual_seed(0)
    rows = []
    for shape in args.shapes:
        layers = layer_weights(shape, dtype, args.device, gen)
        rows += [case(shape, m, layers, dtype, args.device, args.reps) for m in args.rows]
        del layers
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print_rows(rows, ["shape", "rows", "separate_us_per_layer", "fused_us_per_layer", "speedup", "separate_tbs", "fused_tbs"],
               f"decode-step weight GEMMs, separate vs fused projections ({device}, {dtype})",
               ["shape", "M", "separate us/layer", "fused us/layer", "speed-up", "separate TB/s", "fused TB/s"])
    return save_rows(rows, args, device, dtype)


if __name__ == "__main__":
    main()
