"""Pieces shared by the decode benchmarks: a Qwen3-0.6B-shaped random model and an ids-only tokenizer.

Imported as `benchutil` (the scripts run as `python bench/NAME.py`, which puts bench/ on sys.path).
"""

from __future__ import annotations

import copy
import datetime
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen3Config


class IdTokenizer:
    """Token ids only: the benchmarks never need text (decode returns an empty string)."""

    def __init__(self, vocab: int):
        self.eos_token_id = vocab - 1
        self.pad_token_id = vocab - 2

    def decode(self, ids, **_) -> str:
        return ""


def sync(device: str) -> None:
    """Wait for the GPU (timings stop after the work, not after its launch)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    """Give cached GPU memory back between configurations."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def graph_time(fn, reps: int, device: str) -> float:
    """Seconds of one call of fn. On a GPU: fn captured in one CUDA graph (after warm-up calls on a
    side stream, as capture requires) and replayed `reps` times between CUDA events, so launch
    overhead counts as in a captured decode step, no more (eager calls of small kernels measure the
    host's launch time instead). On the CPU: the median of `reps` wall-clock calls after one warm-up."""
    if not device.startswith("cuda"):
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def op_times(prof, cuda: bool) -> list[tuple[str, int, float]]:
    """(name, calls, ms) of each op in a finished torch.profiler profile, most time first. On a GPU the
    kernels alone (device-side events): the aten ops that launch them and the host-side events that
    inductor's launchers name after their kernels carry the same time, so summing every event
    counts a kernel twice. On the CPU: each op's self time."""
    if cuda:
        events = [(e.key, e.count, e.device_time_total / 1e3) for e in prof.key_averages() if e.device_type.name == "CUDA"]
    else:
        events = [(e.key, e.count, e.self_cpu_time_total / 1e3) for e in prof.key_averages()]
    return sorted((e for e in events if e[2] > 0), key=lambda e: -e[2])


def print_rows(rows: list[dict], cols: list[str], title: str, heads: list[str] | None = None) -> None:
    """A table of `rows` (dicts) in columns `cols` (headed `heads`, default the keys): text as it is,
    keys ending in _s as microseconds, other numbers to 3 digits. Plain lines where rich is missing."""
    heads = heads or cols

    def cell(c: str, v) -> str:
        return v if isinstance(v, str) else f"{v * 1e6:.0f} us" if c.endswith("_s") else f"{v:.3g}"

    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for r in rows:
            print("  ".join(f"{h}={cell(c, r[c])}" for h, c in zip(heads, cols, strict=True)))
        return
    t = Table(title=title)
    for h in heads:
        t.add_column(h, justify="right")
    for r in rows:
        t.add_row(*(cell(c, r[c]) for c in cols))
    Console(width=150).print(t)


def save_rows(rows: list[dict], args, device: str, dtype) -> dict:
    """A micro-benchmark's result (date, device, dtype, its arguments, its rows), written as JSON to
    args.out when that is set."""
    result = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "device": device, "dtype": str(dtype), "args": vars(args), "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return result


def qwen3_06b_model(tiny: bool, device: str, tiny_layers: int = 2):
    """(random model, config): the Qwen3-0.6B shape in bf16, or a tiny fp32 one for CPU checks."""
    shape = dict(hidden_size=64, num_hidden_layers=tiny_layers, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, intermediate_size=128, vocab_size=512) if tiny else dict(
                 hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, intermediate_size=3072, vocab_size=151936)
    cfg = Qwen3Config(**shape, tie_word_embeddings=True, max_position_embeddings=65536,
                      eos_token_id=shape["vocab_size"] - 1, pad_token_id=shape["vocab_size"] - 2)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    return model, cfg


def ksa_hybrid(full, tiny: bool, device: str):
    """`full` converted to the 3:1 KSA hybrid (same weights): chunk 8, one summary per chunk, windows
    ([128]*3+[16768])*7 = 21 layers with a 1024-token window + summaries, 7 full layers; Triton
    kernel for prefills on GPU. Tiny: chunk 4, windows [2, 2, 2, 1000] (a 4-layer model)."""
    import ksa

    dtype = next(full.parameters()).dtype
    settings = ksa.KSAConfig(chunk=4, windows=[2, 2, 2, 1000], impl="reference") if tiny else ksa.KSAConfig(
        chunk=8, windows="([128]*3+[16768])*7", impl="triton" if device.startswith("cuda") else "reference")
    return ksa.convert_model(copy.deepcopy(full), settings).to(device=device, dtype=dtype).eval()
