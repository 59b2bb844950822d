"""`golong train` end to end on one GPU: the real Trainer (inline), step by step, per phase.

Each configuration starts from the GPU recipe (recipes/golongrl_qwen3_4b_tmn.yaml, through
golong.config with dotted overrides, as `golong train` reads it) and changes only what a benchmark
must: a random-weight Qwen3 model of a named shape written to a local folder with a locally built
tokenizer (tests/tiny.py; no hub), the 9 generated GoLongRL tasks at one prompt length, G x P
responses of a fixed length, the in-process engine (rollout.engine=static), cluster.mode=inline, no
dynamic sampling (every group is trained, so steps are alike). Then Trainer.train_one_step runs
until --steps or the time budget, whichever comes first.

Configurations, as SHAPE:PROMPT:GxP:NEW[:flag...], PROMPT one length (8k) or several (2k,6k: one
data source each, so prompts of different lengths meet in a step), flags compile|eager,
share|noshare, ksa (the 3:1 KSA hybrid of recipes/ksa*.yaml: chunk 8, one summary, windows of 128
chunks in three layers of four, the fourth full), fused|unfused (rollout.compile_decode: decode layers
through torch.compile; default: the recipe's; unfused also turns rollout.fuse_projections off); defaults for both policies: compiled, shared:

    python bench/train_gpu.py 0.6b:8k:8x4:256 0.6b:8k:8x4:256:eager 0.6b:8k:8x4:256:noshare --budget-s 240
    python bench/train_gpu.py 0.6b:8k:8x4:256:eager --budget-s 100 --append --out r.json   # a process each
    python bench/train_gpu.py --smoke          # CPU, tiny shape, seconds (part of the test suite)

A random-weight model never samples its EOS, so every response runs to NEW tokens and the learner meets
the same response lengths every step; --stop-every N makes one token in N of the vocabulary end a
response (lengths of ~N tokens, new every step, as a trained policy's), which is what a kernel that pays
per new length (a cuDNN plan, a FlexAttention bucket) must be timed under.

Reported per configuration (a table at the end; JSON after every step, so a run cut short keeps what
it measured; `compile_cache_files`: inductor's cache files when it started, 0 = a fresh machine's first step; a step cut short by the budget leaves where it was, `stuck_at`, and, once its rollout
ended, `in_flight`: when its learner began and the rollout's prefill and decode seconds): first-step time (compilation included), then medians over the later steps that
compiled nothing new (`steady_steps` of them; a step meeting a new length bucket compiles) of step
time, rollout (engine prefill and decode apart), learner, weight sync, tokens/s (prompt + response
tokens of all P*G sequences per second of step), learner MFU, peak GPU memory, and the graphs
torch.compile has built for this configuration so far (a run that settles stops adding them). Each
step also records its compile work (compile_counters): FX-graph and AOTAutograd cache hits, misses and
bypasses, and dynamo's compile seconds, so a slow first step on a warm cache says whether it recompiled.
With --profile-learner STEP, that step's learner phase runs under torch.profiler: where its GPU
time goes (top ops by self time on the device), to find what keeps the loop's MFU below
bench/learner.py's on one sequence.

  learner FLOPs = 6 * (N_layers * packed + V*H * response) + 12 * (Hq*D) * sum over layers of pairs
      packed = tokens through the model (a shared prompt once, padding not counted), response =
      response tokens (golong's LM head runs on them only), pairs = attended (query, key) pairs:
      shared, per group p(p+1)/2 + sum_i (r_i p + r_i(r_i+1)/2); unshared sum_i (p+r_i)(p+r_i+1)/2
      (a group split over micro-batches repeats its prompt: counted once here). No recompute.
      KSA policies: packed also counts the summary slots (one per 8 text tokens, through every layer);
      pairs are the KSA mask's: a text query of a windowed layer (128 chunks) attends ~1K text keys +
      one summary per older chunk, of a full layer all earlier text; a summary query its chunk's 8
      tokens + itself (ksa_pairs, equal to ksa.mask's dense mask summed).
      MFU = FLOPs / learner time / 990e12 (H200 dense bf16 datasheet, as bench/learner.py).
  decode floor  = (decode steps * weight bytes + K/V bytes read) / HBM bandwidth (H200 4.8e12, H100 3.35e12 B/s)
      (K/V bytes read: the engine's kv_bytes_read, each step a group's shared prompt once and each live
      row's own entries; KSA ring layers their window and summaries: golong/rollout/kvmem.read_entries).
  prefill floor = sum over prompts (2 N_layers p + 2 * layers * (Hq*D) * p^2) / 790e12 (measured bf16 GEMM).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from benchutil import op_times  # noqa: E402
from learner import PEAK_FLOPS, SHAPES, VOCAB, qwen3_config  # noqa: E402  (bench/learner.py)

GPU_RECIPE = ROOT / "recipes" / "golongrl_qwen3_4b_tmn.yaml"
HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12}  # datasheets (H100 SXM HBM3); other devices: the H200's


def hbm_bytes_per_s(device_name: str) -> float:
    """The decode floor's memory bandwidth for this device (by name; the H200's when unknown)."""
    return next((v for k, v in HBM_BYTES_PER_S.items() if k in device_name), HBM_BYTES_PER_S["H200"])


GEMM_FLOPS = 790e12  # bf16 matmul measured on the project's H200 (shared/ENVIRONMENT.md)
SMOKE = "tiny:96:2x2:8:eager"
KSA_CHUNK, KSA_WINDOW = 8, 128  # the KSA hybrid's chunk (text tokens) and window (chunks) in its windowed layers


def parse_config(spec: str) -> dict:
    shape, prompt, gp, new, *flags = spec.split(":")
    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape!r}; one of {', '.join(SHAPES)}")
    unknown = set(flags) - {"compile", "eager", "share", "noshare", "ksa", "fused", "unfused"}
    if unknown:
        raise SystemExit(f"unknown flags {sorted(unknown)} in {spec!r} (compile|eager, share|noshare, ksa, fused|unfused)")
    g, p = (int(x) for x in gp.lower().split("x"))
    lengths = [int(x[:-1]) * 1024 if x.lower().endswith("k") else int(x) for x in prompt.split(",")]
    ksa = "ksa" in flags
    return {"name": spec, "shape": shape, "prompt_lens": lengths, "group": g, "prompts": p, "new": int(new),
            "ksa": ksa, "compile": "eager" not in flags, "share": "noshare" not in flags,
            "fused": True if "fused" in flags else False if "unfused" in flags else None}


COMPILE_COUNTERS = {"fx_cache_hit": ("inductor", "fxgraph_cache_hit"), "fx_cache_miss": ("inductor", "fxgraph_cache_miss"),
                    "fx_cache_bypass": ("inductor", "fxgraph_cache_bypass"),
                    "aot_cache_hit": ("aot_autograd", "autograd_cache_hit"),
                    "aot_cache_miss": ("aot_autograd", "autograd_cache_miss"),
                    "aot_cache_bypass": ("aot_autograd", "autograd_cache_bypass")}


def compile_counters() -> dict[str, float]:
    """This process's compile work so far: inductor's FX-graph cache and AOTAutograd's cache hits, misses and
    bypasses, and compile_s, the seconds dynamo spent compiling frames (tracing and the backend's compile of
    the forward; a backward compiled lazily at its first call may not be in it, Triton's own JIT compiles are not)."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    out = {name: float(counters[group][key]) for name, (group, key) in COMPILE_COUNTERS.items()}
    out["compile_s"] = float(sum(compilation_time_metrics.get("_compile.compile_inner", [])))
    return out


def policy_folder(shape: str, root: Path, device: str, stop_every: int = 0) -> Path:
    """A random-weight Qwen3 model of `shape` (bf16 on a GPU) and the local tokenizer, saved once. With
    stop_every N, one token id in N of the vocabulary also ends a response (generation_config eos_token_id,
    which the engines read): a random model samples near-uniformly, so responses end after ~N tokens, each
    at its own length, as a trained policy's do (without it every response runs to max_new_tokens)."""
    from transformers import AutoModelForCausalLM

    from tests.tiny import build_tokenizer

    path = root / (f"qwen3-{shape}" + (f"-stop{stop_every}" if stop_every else ""))
    if (path / "config.json").is_file():
        return path
    tok = build_tokenizer()
    cfg = qwen3_config(shape)
    cfg.eos_token_id, cfg.pad_token_id = tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    if stop_every:
        stops = [t for t in range(stop_every // 2, cfg.vocab_size, stop_every) if t != tok.pad_token_id]
        model.generation_config.eos_token_id = [tok.eos_token_id, *stops]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_recipe(c: dict, path: Path, out: Path, args):
    """The GPU recipe with the benchmark's overrides, validated by the recipe schema."""
    from golong.config import load_recipe

    cpu = args.device == "cpu"
    longest = max(c["prompt_lens"])
    budget = args.micro_batch_tokens or max(16384, longest + c["group"] * c["new"])
    layers = SHAPES[c["shape"]]["num_hidden_layers"]
    sets = {
        "model.path": str(path), "model.compile": c["compile"],
        "model.ksa": {"chunk": KSA_CHUNK, "summaries": 1, "windows": f"([{KSA_WINDOW}]*3+[16768])*{layers // 4}",
                      "impl": "reference" if cpu else "triton"} if c["ksa"] else None,
        "data.sources": [{"generate": "all", "length": n, "n": 18} for n in c["prompt_lens"]],  # 2 a task

        "data.max_prompt_tokens": longest,
        "rollout.engine": "static", "rollout.group_size": c["group"], "rollout.prompts_per_step": c["prompts"],
        "rollout.max_new_tokens": c["new"], "rollout.batch_size": c["group"] * c["prompts"],
        "algo.dynamic_sampling": False, "algo.max_generation_rounds": 1,
        "optim.share_prompts": c["share"], "optim.micro_batch_tokens": budget,
        "reward.workers": 2 if cpu else 8,
        "cluster.mode": "inline", "cluster.address": None,
        "trainer.steps": args.steps, "trainer.output_dir": str(out), "trainer.save_every": 10**6,
    }
    if cpu:  # float32 on the CPU (no bf16 autocast there worth timing)
        sets.update({"model.dtype": "float32", "model.attn_implementation": None,  # and no decode compiles or
                     "rollout.compile_decode": False, "rollout.decode_kernel": "torch",  # Triton interpreter
                     "rollout.fuse_projections": False})
    if c.get("fused") is not None:
        sets["rollout.compile_decode"] = c["fused"]
        if not c["fused"]:  # stacked projections need the compiled decode layers
            sets["rollout.fuse_projections"] = False
    overrides = [f"{k}={json.dumps(v)}" for k, v in sets.items()] + list(args.set)
    return load_recipe(GPU_RECIPE, overrides)


def model_params(shape: str) -> int:
    """Parameters of the decoder layers (projections and MLP; norms negligible, embedding apart)."""
    s = SHAPES[shape]
    h, qd, kvd = s["hidden_size"], s["num_attention_heads"] * s["head_dim"], s["num_key_value_heads"] * s["head_dim"]
    return s["num_hidden_layers"] * (2 * h * qd + 2 * h * kvd + 3 * h * s["intermediate_size"])


def ksa_pairs(lo: int, hi: int, window: int | None, chunk: int = KSA_CHUNK) -> int:
    """(query, key) pairs attended by the text queries at positions lo..hi-1 of one sequence on the KSA
    layout, in a layer whose window is `window` chunks (None: a full layer), plus the summary queries of
    the chunks those positions complete (each sees its chunk and itself; ksa/mask.py). A text query at i,
    in chunk c = i // chunk, sees i % chunk + 1 + chunk * min(c, window) text keys and max(0, c - window)
    summaries."""
    i = torch.arange(lo, hi, dtype=torch.int64)
    if window is None:
        text = int((i + 1).sum())
    else:
        c = i // chunk
        text = int((i % chunk + 1 + chunk * c.clamp(max=window) + (c - window).clamp(min=0)).sum())
    return text + (hi // chunk - lo // chunk) * (chunk + 1)


def learner_flops(shape: str, samples: list[tuple[tuple, int]], share: bool, ksa: bool = False) -> float:
    """Model FLOPs of the learner's work on one step's samples [(prompt key, response length)] (docstring)."""
    s = SHAPES[shape]
    h, layers, qd = s["hidden_size"], s["num_hidden_layers"], s["num_attention_heads"] * s["head_dim"]
    windows = [None if (k + 1) % 4 == 0 else KSA_WINDOW for k in range(layers)]  # ([W]*3+[full])*
    groups: dict[tuple, list[int]] = {}
    for (key, p), r in samples:
        groups.setdefault((key, p), []).append(r)

    def pairs(lo: int, hi: int) -> int:  # all layers; causal full attention when not KSA
        if not ksa:
            return layers * ((hi * (hi + 1) - lo * (lo + 1)) // 2)
        return sum(ksa_pairs(lo, hi, w) for w in windows)

    packed = attended = 0
    for (_, p), rs in groups.items():
        if share:  # the prompt once, each response continuing it
            packed += p + sum(rs)
            attended += pairs(0, p) + sum(pairs(p, p + r) for r in rs)
        else:
            packed += sum(p + r for r in rs)
            attended += sum(pairs(0, p + r) for r in rs)
    if ksa:
        packed += packed // KSA_CHUNK  # summary slots pass through every layer
    response = sum(r for _, r in samples)
    return 6 * (model_params(shape) * packed + VOCAB.get(shape, 151936) * h * response) + 12 * qd * attended


def rollout_floors(shape: str, prompt_lens: list[int], stats: dict, weight_bytes: int) -> dict:
    """Decode floor (bytes at HBM speed) and prefill floor (FLOPs at GEMM speed), see the docstring."""
    s = SHAPES[shape]
    qd, layers = s["num_attention_heads"] * s["head_dim"], s["num_hidden_layers"]
    steps, kv_read = stats.get("decode_steps", 0), stats.get("kv_bytes_read", 0)
    n = model_params(shape)  # the embedding is a lookup; the LM head runs on each prompt's last token only
    prefill = sum(2 * n * p + 2 * layers * qd * p * p for p in prompt_lens) / GEMM_FLOPS
    bandwidth = hbm_bytes_per_s(torch.cuda.get_device_name() if torch.cuda.is_available() else "")
    return {"decode_floor_s": (steps * weight_bytes + kv_read) / bandwidth, "prefill_floor_s": prefill}


def compile_cache_files() -> int | None:
    """Files in inductor's on-disk cache when a configuration starts: 0 means its first step compiles as
    on a fresh machine, more that an earlier run left compiled code it may reuse (None: not found)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return sum(1 for p in Path(cache_dir()).rglob("*") if p.is_file())
    except (ImportError, OSError):
        return None


class Run:
    """One configuration: its Trainer, its step records, and its share of the JSON file."""

    def __init__(self, c: dict, args, results: dict, write):
        self.c, self.args, self.results, self.write = c, args, results, write
        self.record = results["configs"][c["name"]] = {"settings": c, "status": "starting", "steps": [],
                                                       "compile_cache_files": compile_cache_files()}

    def over_budget(self) -> None:  # from the watchdog thread: the step in flight did not finish in time
        self.record["status"] = f"over budget: step {len(self.record['steps']) + 1} unfinished at {self.c['budget_s']:.0f} s"
        # where the step was (rollout or learner, which call): the main thread's innermost frames in
        # golong's own code, then the innermost two of all (a compile shows there as torch's)
        frame = sys._current_frames().get(threading.main_thread().ident)
        if frame is not None:
            frames = traceback.extract_stack(frame)
            ours = [f for f in frames if f.filename.startswith(str(ROOT)) and "/.venv/" not in f.filename]
            self.record["stuck_at"] = [f"{Path(f.filename).relative_to(ROOT)}:{f.lineno} {f.name}: {f.line}"
                                       for f in ours[-8:]] + [f"{f.filename}:{f.lineno} {f.name}" for f in frames[-2:]]
        self.write()
        print(f"{self.c['name']}: {self.record['status']}", flush=True)
        print("\n".join(["  at:", *self.record.get("stuck_at", [])]), flush=True)
        import multiprocessing

        for child in multiprocessing.active_children():  # the reward workers would outlive the exit
            child.terminate()
        os._exit(124)

    def run(self, root: Path) -> None:
        from golong.trainer import Trainer

        c, args, t0 = self.c, self.args, time.perf_counter()
        watchdog = threading.Timer(c["budget_s"], self.over_budget)
        watchdog.daemon = True
        watchdog.start()
        trainer = None
        try:
            policy = policy_folder(c["shape"], root, args.device, args.stop_every)
            recipe = make_recipe(c, policy, root / f"run-{len(self.results['configs'])}", args)
            trainer = Trainer(recipe, quiet=True)
            self.record["setup_s"] = round(time.perf_counter() - t0, 2)
            self.record["status"] = "running"
            self._steps(trainer, t0)
            self.record["status"] = "ok"
        except Exception as e:  # recorded; the next configuration still runs
            traceback.print_exc()
            self.record["status"] = f"error: {type(e).__name__}: {str(e)[:300]}"
        finally:
            watchdog.cancel()
            if trainer is not None:
                trainer.cluster.shutdown()
        self.record["summary"] = summarize(self.record["steps"])
        self.write()

    def _steps(self, trainer, t0: float) -> None:
        cluster, c, args = trainer.cluster, self.c, self.args
        seen: list = []
        train_step = cluster.train_step

        step_t0 = [0.0]

        def observed(samples):  # the step's samples, for the FLOP count (the learner runs as it is)
            seen[:] = [((hash(tuple(s.prompt_ids)), len(s.prompt_ids)), len(s.response_ids)) for s in samples]
            # the rollout is done: a step that then runs over budget still says how long it took
            stats = dict(getattr(cluster.engine, "stats", {}) or {})
            self.record["in_flight"] = {"step": trainer.step + 1, "learner_started_at_s": round(time.perf_counter() - step_t0[0], 2),
                                        **{k: float(stats[k]) for k in ("prefill_s", "decode_s") if k in stats}}
            self.write()
            if args.profile_learner == trainer.step + 1:
                out, self.record["learner_profile"] = profiled(train_step, samples)
                return out
            return train_step(samples)

        cluster.train_step = observed
        model = cluster.learner.model
        weight_bytes = sum(p.numel() for p in model.parameters()) * 2
        last = 0.0
        while trainer.step < args.steps and time.perf_counter() - t0 + last < c["budget_s"]:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            step_t0[0] = time.perf_counter()
            compiled_before = compile_counters()
            m = trainer.train_one_step()
            trainer.step += 1
            self.record.pop("in_flight", None)
            # the next step's estimate: the last step's time, but not a first step's (its compiles: a KSA row's
            # cold first step took 195 s at 1.7B / 32K on an H100 and its next ones ~15 s; the watchdog still ends a
            # step that runs over the budget, keeping the steps before it)
            last = m["step_time"] if trainer.step > 1 else 0.0
            stats = dict(getattr(cluster.engine, "stats", {}) or {})
            prompt_lens = [p for _, p in {key for key, _ in seen}]  # one prefill per prompt
            flops = learner_flops(c["shape"], seen, c["share"], c["ksa"])
            rec = {k: float(m.get(k, 0.0)) for k in (
                "step_time", "rollout_time", "train_time", "sync_time", "learner_time_s", "tokens", "tokens_per_s",
                "packed_tokens", "pad_tokens", "response_tokens", "compiled_graphs")}
            rec.update({k: float(stats.get(k, 0.0)) for k in ("prefill_s", "decode_s", "decode_steps", "summary_steps",
                                                              "prefills")})
            # a reward that cannot run (a package missing on the GPU machine) would only be counted, not raised
            rec["reward_errors"] = float(m.get("reward_errors/all", 0.0) + m.get("reward_timeouts/all", 0.0))
            rec.update(rollout_floors(c["shape"], prompt_lens, stats, weight_bytes))
            rec["learner_tflop"] = flops / 1e12
            rec["mfu"] = flops / max(rec["train_time"], 1e-9) / PEAK_FLOPS
            rec["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
            rec["profiled"] = float(args.profile_learner == trainer.step)
            rec.update({k: v - compiled_before[k] for k, v in compile_counters().items()})  # this step's compile work
            self.record["steps"].append({k: sig(v) for k, v in rec.items()})
            self.write()
            print(f"{c['name']} step {trainer.step}: {rec['step_time']:.2f}s (rollout {rec['rollout_time']:.2f}: prefill "
                  f"{rec['prefill_s']:.2f} decode {rec['decode_s']:.2f}, learner {rec['train_time']:.2f}, "
                  f"graphs {rec['compiled_graphs']:.0f}, mem {rec['peak_mem_gib']} GiB)", flush=True)


def profiled(fn, *inputs, top: int = 30):
    """fn(*inputs) under torch.profiler (CPU, and CUDA where there is one): (its result, a dict with the
    wall time, the summed self time of all ops on the device that ran them (the GPU's kernels, else the
    CPU's ops) and the `top` ops by that self time: name, calls, ms, share of the total)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        out = fn(*inputs)
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    ops = op_times(prof, cuda)
    total = sum(ms for _, _, ms in ops)
    rows = [{"op": name[:120], "calls": calls, "ms": sig(ms), "share": sig(ms / max(total, 1e-9))}
            for name, calls, ms in ops[:top]]
    print(f"learner profile: wall {wall:.2f} s, {'GPU kernels' if cuda else 'CPU ops'} {total / 1e3:.2f} s", flush=True)
    for r in rows[:15]:
        print(f"  {r['ms']:9.1f} ms {r['share']:6.1%} {r['calls']:6d}x  {r['op']}", flush=True)
    return out, {"wall_s": sig(wall), "busy_s": sig(total / 1e3), "on": "cuda" if cuda else "cpu", "top": rows}


def sig(x: float) -> float:
    """x to 5 significant digits (JSON that stays readable, tiny CPU numbers kept)."""
    return float(f"{x:.5g}")


def summarize(steps: list[dict]) -> dict:
    """First-step time, then medians over the later steps that compiled nothing new (their
    compiled_graphs count equals the step before's): a step that met a new length bucket pays for a
    compile and is not steady state. Where every later step compiled, over all later steps
    (`steady_steps` 0 says so); all steps when only one ran."""
    if not steps:
        return {}
    quiet = [b for a, b in itertools.pairwise(steps)
             if b["compiled_graphs"] == a["compiled_graphs"] and not b.get("profiled")]  # a profile slows its step
    later = quiet or steps[1:] or steps
    out = {"first_step_s": steps[0]["step_time"], "steps": len(steps), "steady_steps": len(quiet)}
    for k in ("step_time", "rollout_time", "prefill_s", "decode_s", "decode_floor_s", "prefill_floor_s", "train_time",
              "sync_time", "tokens_per_s", "mfu", "peak_mem_gib", "packed_tokens", "pad_tokens"):
        out[k] = statistics.median(r[k] for r in later)
    out["decode_over_floor"] = sig(out["decode_s"] / out["decode_floor_s"]) if out["decode_floor_s"] else None
    floor = out["decode_floor_s"] + out["prefill_floor_s"]
    out["rollout_over_floor"] = sig(out["rollout_time"] / floor) if floor else None
    out["compiled_graphs"] = steps[-1]["compiled_graphs"]
    out["reward_errors"] = sum(r.get("reward_errors", 0.0) for r in steps)
    return out


def table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"golong train, one step ({results['machine']['device']})")
    cols = [("config", None), ("status", None), ("first s", "first_step_s"), ("step s", "step_time"),
            ("rollout s", "rollout_time"), ("prefill s", "prefill_s"), ("decode s", "decode_s"),
            ("decode/floor", "decode_over_floor"), ("learner s", "train_time"), ("sync s", "sync_time"),
            ("tok/s", "tokens_per_s"), ("MFU", "mfu"), ("peak GiB", "peak_mem_gib"), ("graphs", "compiled_graphs"),
            ("steady", "steady_steps")]
    for name, _ in cols:
        t.add_column(name, justify="left" if name in ("config", "status") else "right")
    for name, r in results["configs"].items():
        s = r.get("summary") or summarize(r["steps"])
        t.add_row(name, r["status"], *[("" if s.get(k) is None else f"{s[k]:.3g}" if isinstance(s[k], float) else str(s[k]))
                                       for _, k in cols[2:]])
    Console(width=200).print(t)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", help="SHAPE:PROMPT:GxP:NEW[:compile|eager][:share|noshare][:ksa]")
    ap.add_argument("--smoke", action="store_true", help=f"CPU, {SMOKE}, 3 steps: seconds")
    ap.add_argument("--steps", type=int, default=8, help="steps per configuration at most (the first compiles)")
    ap.add_argument("--budget-s", type=float, nargs="+", default=[300.0],
                    help="wall-clock budget of each configuration, setup included (one value for all, or one each)")
    ap.add_argument("--micro-batch-tokens", type=int, default=None,
                    help="optim.micro_batch_tokens (default: max(16384, prompt + G * new): one group per micro-batch)")
    ap.add_argument("--profile-learner", type=int, default=0, metavar="STEP",
                    help="profile the learner phase of step STEP (torch.profiler): its top ops by GPU time go into "
                         "the JSON (learner_profile) and print; that step is left out of the medians")
    ap.add_argument("--stop-every", type=int, default=0, metavar="N",
                    help="one token in N of the vocabulary ends a response: lengths of ~N tokens, new every step "
                         "(default 0: every response runs to the configuration's NEW tokens)")
    ap.add_argument("--set", action="append", default=[], help="one more recipe override key=value (repeatable)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_gpu.json"))
    ap.add_argument("--append", action="store_true",
                    help="keep the configurations already in --out (one process per configuration, one file)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.configs, args.steps, args.device = args.configs or [SMOKE], min(args.steps, 3), "cpu"
    if not args.configs:
        ap.error("give configurations, or --smoke")
    configs = [parse_config(s) for s in args.configs]
    if len(args.budget_s) not in (1, len(configs)):
        ap.error(f"--budget-s takes one value or one per configuration ({len(configs)})")
    budgets = args.budget_s * len(configs) if len(args.budget_s) == 1 else args.budget_s
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU x{os.cpu_count()}"
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "configs": {}, "args": vars(args),
               "note": "configurations run one after another in one process: inductor's caches are warm after the first",
               "machine": {"device": dev, "torch": torch.__version__, "platform": platform.platform()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.is_file():
        results["configs"] = json.loads(out.read_text()).get("configs", {})
    lock = threading.Lock()

    def write() -> None:
        with lock:
            out.write_text(json.dumps(results, indent=1))

    with tempfile.TemporaryDirectory(prefix="golong-train-gpu-") as tmp:
        for c, budget in zip(configs, budgets, strict=True):
            c["budget_s"] = budget
            Run(c, args, results, write).run(Path(tmp))
            torch._dynamo.reset()  # each configuration compiles from scratch: its first step is a user's
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    table(results)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
