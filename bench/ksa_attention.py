"""Benchmark: KSA attention kernels vs full causal SDPA on one GPU.

    python bench/ksa_attention.py [--lengths 8192 32768 131072] [--out bench/results/ksa_attention.json]

For each text length T: SDPA full causal attention on the T text tokens, and KSA attention ("triton",
"flex", and "reference" where its dense L x L mask fits) on the expanded layout (L = T + T // C * S),
forward and forward+backward, median of several CUDA-event timings after warm-up. TFLOP/s counts only
the attended (query, key) pairs, from the mask rule in closed form per query:

    text query t, chunk c = t // C:  t - max(0, c - W) * C + 1 text keys  +  max(0, c - W) * S summaries
    summary j of a full chunk:       C text keys + j + 1 summaries
    flops(fwd) = 4 * pairs * D * H;  flops(fwd+bwd) = 3.5 * flops(fwd)   (the FlashAttention convention)

Also: the error of each kernel in bf16 against the fp32 reference at a moderate length (output and
q/k/v gradients), with the reference kernel itself in bf16 as the floor. Needs only torch (+ triton);
prints a table (rich if installed) and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ksa.attention import ksa_attention  # noqa: E402
from ksa.layout import expanded_length  # noqa: E402


def attended_pairs(text_len: int, chunk: int, summaries: int, window: int, visible: bool = True) -> int:
    """Number of (query, key) pairs the KSA mask lets through (closed form per query, summed)."""
    t = torch.arange(text_len, dtype=torch.int64)
    old = (t // chunk - window).clamp(min=0)  # chunks older than the window, per text query
    pairs = int((t - old * chunk + 1).sum())
    if visible:
        pairs += int(old.sum()) * summaries
    n_full = text_len // chunk
    pairs += n_full * (summaries * chunk + summaries * (summaries + 1) // 2)
    return pairs


def causal_pairs(text_len: int) -> int:
    return text_len * (text_len + 1) // 2


def time_ms(fn, warmup: int, reps: int) -> float:
    """Median of `reps` CUDA-event timings after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def make_inputs(length, heads, kv_heads, dim, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    shapes = [(1, heads, length, dim), (1, kv_heads, length, dim), (1, kv_heads, length, dim)]
    xs = [torch.randn(s, device="cuda", dtype=dtype, generator=g).requires_grad_() for s in shapes]
    do = torch.randn(1, heads, length, dim, device="cuda", dtype=dtype, generator=g)
    return xs, do


def runner(impl, args):
    """(fn(q, k, v) -> out) for 'sdpa' (full causal on text) or a KSA impl (on the expanded layout)."""
    if impl == "sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
    kw = dict(chunk=args.chunk, summaries=args.summaries, window=args.window, impl=impl)
    return lambda q, k, v: ksa_attention(q, k, v, **kw)


def measure(impl, text_len, args, parts=("fwd", "fwdbwd"), reps=None):
    length = text_len if impl == "sdpa" else expanded_length(text_len, args.chunk, args.summaries)
    (q, k, v), do = make_inputs(length, args.heads, args.kv_heads, args.dim, torch.bfloat16)
    fn = runner(impl, args)
    reps = reps or args.reps
    fwd = both = float("nan")
    if "fwd" in parts:
        fwd = time_ms(lambda: fn(q, k, v), args.warmup, reps)
    if "fwdbwd" in parts:
        both = time_ms(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do), args.warmup, reps)
    pairs = causal_pairs(text_len) if impl == "sdpa" else attended_pairs(text_len, args.chunk, args.summaries, args.window)
    flops = 4 * pairs * args.dim * args.heads
    return dict(
        impl=impl, text_len=text_len, length=length, pairs=pairs, fwd_ms=fwd, fwdbwd_ms=both,
        fwd_tflops=flops / fwd / 1e9, fwdbwd_tflops=3.5 * flops / both / 1e9,
    )  # fmt: skip


def errors(impls, args):
    """Relative L2 and max-abs error of out, dq, dk, dv (bf16 inputs) vs the fp32 reference."""
    text_len = args.error_len
    length = expanded_length(text_len, args.chunk, args.summaries)
    (q, k, v), do = make_inputs(length, args.heads, args.kv_heads, args.dim, torch.float32, seed=1)
    kw = dict(chunk=args.chunk, summaries=args.summaries, window=args.window)
    ref = ksa_attention(q, k, v, **kw)
    ref_all = [ref, *torch.autograd.grad(ref, (q, k, v), do)]
    rows = []
    for impl in impls:
        qb, kb, vb = (x.detach().bfloat16().requires_grad_() for x in (q, k, v))
        out = ksa_attention(qb, kb, vb, impl=impl, **kw)
        got = [out, *torch.autograd.grad(out, (qb, kb, vb), do.bfloat16())]
        row = dict(impl=impl + (" (bf16)" if impl == "reference" else ""), text_len=text_len)
        for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref_all, strict=True):
            diff = a.float() - b
            row[f"{name}_rel"] = (diff.norm() / b.norm()).item()
            row[f"{name}_max"] = diff.abs().max().item()
        rows.append(row)
    return rows


def sweep_triton(text_len, args, log):
    """Try a few tile configurations of the Triton kernels at one length; keep the fastest."""
    from ksa import triton_attention as ta

    results = []
    best = None
    for split in (True, False):
        ta.SPLIT_FULL_TILES = split
        ms = measure("triton", text_len, args, parts=("fwdbwd",), reps=5)["fwdbwd_ms"]
        results.append(dict(kernel="split_full_tiles", tiles=split, ms=ms))
        log(f"sweep split_full_tiles={split}: {ms:.3f} ms")
        if best is None or ms < best[1]:
            best = (split, ms)
    ta.SPLIT_FULL_TILES = best[0]
    # (BLOCK_M, BLOCK_N, num_warps, num_stages); one that does not fit the card's shared memory is skipped
    fwd_opts = [(64, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (64, 128, 4, 3), (64, 64, 4, 4),
                (128, 64, 8, 4)]
    dq_opts = [(64, 64, 4, 2), (128, 64, 8, 2), (64, 128, 8, 2), (128, 128, 8, 2), (64, 64, 4, 3), (128, 64, 4, 2)]
    kv_opts = [(32, 128, 8, 2), (64, 64, 8, 2), (64, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (64, 128, 4, 2),
               (128, 128, 8, 1)]
    for kernel, opts in (("fwd", fwd_opts), ("dq", dq_opts), ("kv", kv_opts)):
        best = None
        for opt in opts:
            ta.GPU_TILES[kernel] = opt
            try:
                part = "fwd" if kernel == "fwd" else "fwdbwd"
                ms = measure("triton", text_len, args, parts=(part,), reps=5)[part + "_ms"]
            except Exception as e:  # noqa: BLE001 - a config that fails to compile is skipped
                ms = float("inf")
                log(f"sweep {kernel} {opt}: {type(e).__name__}: {e}")
            results.append(dict(kernel=kernel, tiles=list(opt), ms=ms))
            log(f"sweep {kernel} {opt}: {ms:.3f} ms")
            if best is None or ms < best[1]:
                best = (opt, ms)
        ta.GPU_TILES[kernel] = best[0]
    return results, dict(ta.GPU_TILES, split_full_tiles=ta.SPLIT_FULL_TILES)


def breakdown(impl, text_len, args):
    """GPU time per kernel name of one forward+backward (mean of 3, torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    length = expanded_length(text_len, args.chunk, args.summaries)
    (q, k, v), do = make_inputs(length, args.heads, args.kv_heads, args.dim, torch.bfloat16)
    fn = runner(impl, args)
    torch.autograd.grad(fn(q, k, v), (q, k, v), do)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            torch.autograd.grad(fn(q, k, v), (q, k, v), do)
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us > 0:
            rows.append(dict(impl=impl, text_len=text_len, kernel=e.key[:60], ms=us / 3 / 1000, calls=e.count // 3))
    return sorted(rows, key=lambda r: -r["ms"])[:12]


def table(rows, cols, title):
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for c in cols:
            t.add_column(c)
        for r in rows:
            t.add_row(*[_fmt(r.get(c)) for c in cols])
        Console(width=200).print(t)
    except ImportError:
        print(title)
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join(_fmt(r.get(c)) for c in cols))


def _fmt(x):
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1e-2 else f"{x:.2f}"
    return "" if x is None else str(x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--impls", nargs="+", default=["triton", "flex", "reference"])
    p.add_argument("--reference-max", type=int, default=8192, help="largest text length for the dense reference")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--summaries", type=int, default=1)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--error-len", type=int, default=4096)
    p.add_argument("--sweep", type=int, default=0, help="text length at which to sweep Triton tiles (0: no sweep)")
    p.add_argument("--breakdown", type=int, nargs="*", default=[], help="text lengths for a per-kernel profile")
    p.add_argument("--out", default="bench/results/ksa_attention.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench/ksa_attention.py needs a CUDA GPU")

    import triton

    result = dict(
        device=torch.cuda.get_device_name(), date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        torch=torch.__version__, triton=triton.__version__, config=vars(args), timings=[], errors=[], log=[],
    )  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        out.write_text(json.dumps(result, indent=1))

    def log(msg):
        print(msg, flush=True)
        result["log"].append(msg)
        save()

    if args.sweep and "triton" in args.impls:
        result["sweep"], _ = sweep_triton(args.sweep, args, log)
    from ksa import triton_attention as ta

    result["triton_tiles"] = dict(ta.GPU_TILES, split_full_tiles=ta.SPLIT_FULL_TILES)
    log(f"triton tiles: {result['triton_tiles']}")
    try:
        result["errors"] = errors([i for i in args.impls if i != "reference"] + ["reference"], args)
    except Exception as e:  # noqa: BLE001 - keep the timings even if one error check fails
        log(f"errors: {type(e).__name__}: {e}")
    save()
    for text_len in args.lengths:
        base = None
        for impl in ["sdpa", *args.impls]:
            if impl == "reference" and text_len > args.reference_max:
                continue
            try:
                r = measure(impl, text_len, args)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: record and go on
                log(f"{impl} T={text_len}: {type(e).__name__}: {str(e)[:300]}")
                torch.cuda.empty_cache()
                continue
            torch.cuda.empty_cache()
            if impl == "sdpa":
                base = r
            if base is not None:
                r["fwd_speedup"] = base["fwd_ms"] / r["fwd_ms"]
                r["fwdbwd_speedup"] = base["fwdbwd_ms"] / r["fwdbwd_ms"]
                r["ideal_speedup"] = base["pairs"] / r["pairs"]
            result["timings"].append(r)
            log(
                f"{impl:9s} T={text_len:6d} fwd {r['fwd_ms']:8.3f} ms  fwd+bwd {r['fwdbwd_ms']:8.3f} ms  "
                f"x{r.get('fwdbwd_speedup', 1.0):.2f} (ideal x{r.get('ideal_speedup', 1.0):.2f})"
            )
    for text_len in args.breakdown:
        try:
            result.setdefault("breakdown", []).extend(breakdown("triton", text_len, args))
        except Exception as e:  # noqa: BLE001
            log(f"breakdown: {type(e).__name__}: {e}")
    cols = ["impl", "text_len", "fwd_ms", "fwdbwd_ms", "fwd_speedup", "fwdbwd_speedup", "ideal_speedup", "fwd_tflops", "fwdbwd_tflops"]
    table(result["timings"], cols, f"KSA attention vs SDPA causal ({result['device']}, bf16, H={args.heads}, d={args.dim})")
    ecols = ["impl", "text_len", "out_rel", "dq_rel", "dk_rel", "dv_rel", "out_max", "dq_max", "dk_max", "dv_max"]
    table(result["errors"], ecols, "error vs fp32 reference (bf16 inputs)")
    if result.get("breakdown"):
        table(result["breakdown"], ["text_len", "kernel", "ms", "calls"], "triton fwd+bwd per kernel")
    save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
