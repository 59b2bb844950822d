"""Benchmark: decode attention over one key part, the split-K Triton kernel vs the engine's torch path.

    python bench/decode_kernel.py [--rows 32] [--keys 2048 16384 32768] [--queries 4 16 32] [--out F.json]
    python bench/decode_kernel.py --rows 2 16 --keys 1024 --second-keys 4096 --queries 2 16 32   (two parts)
    python bench/decode_kernel.py --device cpu --rows 2 --keys 600 --queries 2 --dim 32 --reps 1   (smoke)

Per (keys S, stacked queries M): q [N, H, M, D] against K/V [N, H, S, D] that are slices of a larger cache
(as in the engine), a length bias hiding the last keys of each row.
- torch: softmax(q k^T * scale + bias) v as matmul, float32 softmax, matmul (the engine's
  `rollout.decode_kernel: torch` for one part).
- triton: merge_partials(decode_partials(...)) (ksa/triton_decode.py; `decode_kernel: triton`), its split
  size chosen by split_size (more, shorter splits where N x H x splits would leave SMs idle);
- triton512: the same with every split 512 keys (the kernel before split_size), to see the gain.
With --second-keys S2, each case also has a second key part of S2 keys (a KSA layer's summaries after its
window text) and times both parts in one launch (`one_launch`: decode_key_parts, as the engine's KSA layers call it)
against one launch per part at the same split (`two_launches`), each merged; `launch_gain` is their ratio.
On a GPU each path is captured in a CUDA graph and timed over replays (as the engine runs it: no
host launch time); on the CPU the median wall clock; K/V bytes over time as TB/s; the speed-up torch / triton;
each path's largest error against a float32 reference. Prints a table, writes JSON.
With --splits, each case is also timed at each given split size (keys per program): the kernel alone, the
kernel + merge_partials eagerly, and the kernel + merge_partials through torch.compile (as the engine's
compiled decode layers merge); more, shorter splits keep more SMs busy but write more partials to merge.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
for _dir in Path(__file__).resolve().parents[1::-1]:  # the checkout (ksa) and bench/ (benchutil), uninstalled
    sys.path.insert(0, str(_dir))

from benchutil import graph_time, print_rows, save_rows  # noqa: E402

from ksa.triton_decode import (  # noqa: E402
    decode_key_parts,
    decode_partials,
    merge_key_parts,
    merge_partials,
    split_size,
)


def torch_path(q, k, v, bias, scale):
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale + bias[:, None, None]
    return torch.matmul(torch.softmax(scores, -1).to(v.dtype), v)


def triton_path(q, k, v, bias, scale, split=0):
    return merge_partials(*decode_partials(q, k, v, bias[:, None, None, :], scale, q.shape[2], 1, split)).to(q.dtype)


def triton512_path(q, k, v, bias, scale):
    return triton_path(q, k, v, bias, scale, 512)


def one_launch_path(q, k, v, bias, k2, v2, bias2, scale):
    parts = [(k, v, bias[:, None, None, :]), (k2, v2, bias2[:, None, None, :])]
    return merge_partials(*decode_key_parts(q, parts, scale, q.shape[2], 1)).to(q.dtype)


def two_launches_path(q, k, v, bias, k2, v2, bias2, scale):
    split = split_size(q.shape[0] * q.shape[1], k.shape[2] + k2.shape[2])
    return merge_key_parts([decode_partials(q, kk, vv, bb[:, None, None, :], scale, q.shape[2], 1, split)
                            for kk, vv, bb in ((k, v, bias), (k2, v2, bias2))]).to(q.dtype)  # fmt: skip


def cache_slices(gen, n: int, h: int, s: int, d: int, dtype, device: str):
    """k, v [n, h, s, d] as slices of larger caches, as the engine reads them."""
    cache_k, cache_v = (torch.randn(n + 2, h, s + 64, d, generator=gen, device=device).to(dtype) for _ in range(2))
    return cache_k[:n, :, :s], cache_v[:n, :, :s]


def case(n: int, h: int, m: int, s: int, d: int, dtype, device: str, reps: int, s2: int = 0) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    k, v = cache_slices(gen, n, h, s, d, dtype, device)
    q = torch.randn(n, h, m, d, generator=gen, device=device).to(dtype)
    lengths = s - torch.arange(n, device=device) % 7  # the last few keys of some rows hidden
    hidden = torch.arange(s, device=device)[None] >= lengths[:, None]
    bias = torch.zeros(n, s, device=device).masked_fill(hidden, float("-inf"))
    scale = d**-0.5
    ref = torch_path(q.float(), k.float(), v.float(), bias, scale)
    row = {"rows": n, "heads": h, "queries": m, "keys": s, "dim": d, "split": split_size(n * h, s)}
    for name, fn in (("torch", torch_path), ("triton", triton_path), ("triton512", triton512_path)):
        row[f"{name}_s"] = graph_time(lambda fn=fn: fn(q, k, v, bias, scale), reps, device)
        row[f"{name}_err"] = float((fn(q, k, v, bias, scale).float() - ref).abs().max())
        row[f"{name}_tbs"] = 2 * k.numel() * k.element_size() / row[f"{name}_s"] / 1e12
    row["speedup"] = row["torch_s"] / row["triton_s"]
    row["split_gain"] = row["triton512_s"] / row["triton_s"]
    if s2:
        k2, v2 = cache_slices(gen, n, h, s2, d, dtype, device)
        bias2 = torch.zeros(n, s2, device=device)
        ref2 = torch_path(q.float(), torch.cat([k, k2], 2).float(), torch.cat([v, v2], 2).float(),
                          torch.cat([bias, bias2], 1), scale)  # fmt: skip
        row["second_keys"] = s2
        for name, fn in (("one_launch", one_launch_path), ("two_launches", two_launches_path)):
            row[f"{name}_s"] = graph_time(lambda fn=fn: fn(q, k, v, bias, k2, v2, bias2, scale), reps, device)
            row[f"{name}_err"] = float((fn(q, k, v, bias, k2, v2, bias2, scale).float() - ref2).abs().max())
        row["launch_gain"] = row["two_launches_s"] / row["one_launch_s"]
    return row


def split_sweep(n: int, h: int, m: int, s: int, d: int, dtype, device: str, reps: int, splits: list[int]) -> list[dict]:
    """One row per split size: kernel_s (decode_partials alone), eager_s (+ merge_partials), compiled_s (+ the
    merge through torch.compile), the K/V rate of compiled_s and its largest error against float32."""
    gen = torch.Generator(device=device).manual_seed(0)
    k, v = cache_slices(gen, n, h, s, d, dtype, device)
    q = torch.randn(n, h, m, d, generator=gen, device=device).to(dtype)
    bias = torch.zeros(n, 1, 1, s, device=device)
    scale = d**-0.5
    ref = torch_path(q.float(), k.float(), v.float(), bias[:, 0, 0], scale)
    torch._dynamo.config.recompile_limit = 64  # one static compile of the merge per shape
    merge = torch.compile(merge_partials, dynamic=False, fullgraph=True)
    rows = []
    for split in splits:
        def kernel(split=split):
            return decode_partials(q, k, v, bias, scale, m, 1, split)

        row = {"rows": n, "heads": h, "queries": m, "keys": s, "split": split, "programs": n * h * -(-s // split),
               "auto": split == split_size(n * h, s)}
        row["kernel_s"] = graph_time(kernel, reps, device)
        row["eager_s"] = graph_time(lambda: merge_partials(*kernel()), reps, device)
        row["compiled_s"] = graph_time(lambda: merge(*kernel()), reps, device)
        row["compiled_tbs"] = 2 * k.numel() * k.element_size() / row["compiled_s"] / 1e12
        row["err"] = float((merge(*kernel()).float() - ref).abs().max())
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", type=int, nargs="+", default=[32],
                    help="N: rows (per-row keys) or blocks (a shared prompt)")
    ap.add_argument("--heads", type=int, default=8, help="KV heads")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--keys", type=int, nargs="+", default=[2048, 16384, 32768])
    ap.add_argument("--queries", type=int, nargs="+", default=[4, 16, 32], help="M: stacked queries per (row, KV head)")
    ap.add_argument("--second-keys", type=int, default=0,
                    help="S2: also time a second key part of S2 keys in one launch vs one launch per part")
    ap.add_argument("--splits", type=int, nargs="+", default=None,
                    help="time each case at these split sizes instead (multiples of 64): kernel, + eager / compiled merge")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32  # the interpreter has no bf16 dot
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (Triton interpreter)"
    if args.splits:
        rows = [r for n in args.rows for s in args.keys for m in args.queries
                for r in split_sweep(n, args.heads, m, s, args.dim, dtype, args.device, args.reps, args.splits)]
        print_rows(rows, ["rows", "queries", "keys", "split", "programs", "auto", "kernel_s", "eager_s", "compiled_s",
                          "compiled_tbs", "err"], f"decode attention by split size ({device}, {dtype})")
        return save_rows(rows, args, device, dtype)
    rows = [case(n, args.heads, m, s, args.dim, dtype, args.device, args.reps, args.second_keys)
            for n in args.rows for s in args.keys for m in args.queries]
    print_rows(rows, ["rows", "queries", "keys", "split", "torch_s", "triton_s", "triton512_s", "speedup", "split_gain",
                      "torch_tbs", "triton_tbs", "torch_err", "triton_err"], f"decode attention, one key part: torch vs split-K Triton ({device}, {dtype})")
    if args.second_keys:
        print_rows(rows, ["rows", "queries", "keys", "second_keys", "one_launch_s", "two_launches_s", "launch_gain",
                          "one_launch_err", "two_launches_err"], f"two key parts: one launch vs one launch each ({device}, {dtype})")
    return save_rows(rows, args, device, dtype)


if __name__ == "__main__":
    main()
