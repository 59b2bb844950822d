"""Decode with and without shared prompts in golong's engine (StaticEngine share_prefix on / off).

P prompts of L random tokens, G greedy samples each, N new tokens; each layout runs `--reps` times
after a warm-up call (graph capture on a GPU) and reports the median decode time per step (the
engine's own clock, synchronised every step), the K/V storage (`cache_bytes`) and the K/V entries a
step must read (`kv_bytes_read` / steps: each group's prompt once when shared, each row's copy when
not; KSA layers their window and summaries, golong/rollout/kvmem.read_entries). Both layouts must give the same tokens (checked). With --compile-decode each layout
also runs with StaticEngine(compile_decode=True) (decode layers through torch.compile, then the CUDA
graph) and its ms/step is reported beside the uncompiled one; `warmup_s` is the first call (graph
capture, and with compile_decode the compiles: one per step shape).

With --ksa the model is first converted to the 3:1 KSA hybrid (benchutil.ksa_hybrid: chunk 8, windows
of 128 chunks + summaries in three layers of four; tiny: chunk 4, windows [2, 2, 2, 1000]): shared =
ksa/static_shared.py, unshared = ksa/static_cache.py.

Shapes: `tiny` = hidden 256, 4 layers, 4 q / 2 kv heads of 64, MLP 512, vocab 512, float32 on a CPU
(bfloat16 on a GPU); `0.6b` = Qwen3-0.6B (benchutil.qwen3_06b_model), random weights.

Run: python bench/prefix_decode.py --device cpu                                  (CPU, tiny)
     python bench/prefix_decode.py --shape 0.6b --prompt-len 8192 --prompts 4 --new-tokens 256 --out $OUT/prefix.json
     python bench/prefix_decode.py --shape 0.6b --prompt-len 8192 --prompts 4 --new-tokens 256 --compile-decode \
         --out $OUT/prefixfuse.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from benchutil import IdTokenizer, ksa_hybrid, op_times, qwen3_06b_model
from transformers import AutoModelForCausalLM, Qwen3Config

from golong.rollout.base import SamplingParams
from golong.rollout.static import StaticEngine


def tiny_model(device: str):
    cfg = Qwen3Config(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                      intermediate_size=512, vocab_size=512, max_position_embeddings=1 << 17, tie_word_embeddings=True,
                      eos_token_id=511, pad_token_id=510)
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32 if device == "cpu" else torch.bfloat16).eval()


def run(model, prompts: list[list[int]], args, share: bool, compiled: bool = False) -> tuple[dict, list]:
    tok = IdTokenizer(model.config.vocab_size)
    new = args.new_tokens
    engine = StaticEngine(model, tok, max_batch=len(prompts) * args.group, max_len=len(prompts[0]) + new,
                          prefill_chunk=32768, share_prefix=share, compile_decode=compiled,
                          decode_kernel=args.decode_kernel, fuse_projections=args.fuse_projections and compiled)
    greedy = SamplingParams(max_new_tokens=new, temperature=args.temperature)
    t0 = time.perf_counter()
    out = engine.generate(prompts, args.group, greedy)  # warm-up (graph capture, compiles)
    warmup = time.perf_counter() - t0
    per_step = []
    for _ in range(args.reps):
        engine.generate(prompts, args.group, greedy)
        per_step.append(engine.stats["decode_s"] / engine.stats["decode_steps"])
    st = engine.stats
    read = st["kv_bytes_read"] / st["decode_steps"] / 2**20
    return {"ms_per_step": statistics.median(per_step) * 1e3, "steps": st["decode_steps"], "warmup_s": warmup,
            "kv_storage_mib": engine.cache_bytes() / 2**20, "kv_read_mib_per_step": read}, \
        [[c.response_ids for c in g] for g in out]


def profile_steps(model, prompts: list[list[int]], args, compiled: bool) -> dict:
    """One more generate of the shared layout under torch.profiler: kernel time per decode step and
    the top kernels by total GPU time (busy / wall < 1 means the GPU idles between kernels)."""
    from torch.profiler import ProfilerActivity, profile

    tok = IdTokenizer(model.config.vocab_size)
    engine = StaticEngine(model, tok, max_batch=len(prompts) * args.group, max_len=len(prompts[0]) + args.new_tokens,
                          prefill_chunk=32768, share_prefix=True, compile_decode=compiled,
                          decode_kernel=args.decode_kernel, fuse_projections=args.fuse_projections and compiled)
    greedy = SamplingParams(max_new_tokens=args.new_tokens, temperature=0)
    engine.generate(prompts, args.group, greedy)  # capture outside the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        engine.generate(prompts, args.group, greedy)
    steps = engine.stats["decode_steps"]
    events = op_times(prof, args.device == "cuda")
    busy = sum(ms for _, _, ms in events)  # ms over the whole call (prefill included)
    top = [{"name": name[:90], "ms_per_step": ms / steps, "calls_per_step": calls / steps} for name, calls, ms in events[:30]]
    calls = sum(c for _, c, _ in events) / steps
    print(f"profile ({'compiled' if compiled else 'eager'} layers): wall {engine.stats['decode_s'] / steps * 1e3:.2f} "
          f"ms/step, prefill {engine.stats['prefill_s']:.2f} s, kernels {busy:.1f} ms in all, {calls:.0f} calls/step")
    for t in top:
        print(f"  {t['ms_per_step']:7.3f} ms/step {t['calls_per_step']:7.1f} calls/step  {t['name']}")
    return {"wall_ms_per_step": engine.stats["decode_s"] / steps * 1e3, "prefill_s": engine.stats["prefill_s"],
            "kernel_ms_total": busy, "calls_per_step": calls, "steps": steps, "top": top}


def token_match(a: list, b: list) -> float:
    """Fraction of responses (over all groups) whose tokens are identical in runs a and b."""
    pairs = [(x, y) for ga, gb in zip(a, b, strict=True) for x, y in zip(ga, gb, strict=True)]
    return sum(x == y for x, y in pairs) / len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", choices=("tiny", "0.6b"), default="tiny")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compile-decode", action="store_true", help="also run each layout with compile_decode=True")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the token checks need it)")
    ap.add_argument("--ksa", action="store_true", help="the 3:1 KSA hybrid of the model (benchutil.ksa_hybrid)")
    ap.add_argument("--decode-kernel", choices=("torch", "triton"), default="torch",
                    help="decode attention: torch ops or the split-K Triton kernel (ksa/triton_decode.py)")
    ap.add_argument("--profile", action="store_true", help="profile one more shared-layout call (kernels per step)")
    ap.add_argument("--fuse-projections", action="store_true",
                    help="StaticEngine(fuse_projections=True): q/k/v and gate/up stacked (compiled layouts only)")
    ap.add_argument("--only", choices=("shared", "shared+compile"), default=None,
                    help="run this layout alone (no token comparison; --profile then profiles it alone)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = tiny_model(args.device) if args.shape == "tiny" else qwen3_06b_model(False, args.device)[0]
    if args.ksa:
        model = ksa_hybrid(model, args.shape == "tiny", args.device)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, model.config.vocab_size - 2, (args.prompt_len,), generator=gen).tolist()
               for _ in range(args.prompts)]
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "settings": vars(args)}
    tokens = {}
    layouts = [(share, compiled) for compiled in ((False, True) if args.compile_decode else (False,))
               for share in (False, True)]
    if args.only:
        layouts = [(True, args.only.endswith("+compile"))]
    for share, compiled in layouts:
        name = ("shared" if share else "unshared") + ("+compile" if compiled else "")
        result[name], tokens[name] = run(model, prompts, args, share, compiled)
        r = result[name]
        read = "" if r["kv_read_mib_per_step"] is None else f"  read {r['kv_read_mib_per_step']:8.1f} MiB/step"
        print(f"{name:17s} {r['ms_per_step']:8.2f} ms/step  {r['steps']} steps  K/V stored {r['kv_storage_mib']:8.1f} "
              f"MiB{read}  warm-up {r['warmup_s']:.1f} s")
    if not args.only:
        result["same_tokens"] = tokens["shared"] == tokens["unshared"]
        for layout in ("unshared", "shared") if args.compile_decode else ():  # compiled vs not, same layout
            result[f"token_match_{layout}+compile"] = token_match(tokens[layout], tokens[layout + "+compile"])
        print(f"same tokens shared / unshared: {result['same_tokens']}",
              *(f"{k} {v:.3f}" for k, v in result.items() if k.startswith("token_match")))
    if args.profile:
        for compiled in sorted({c for share, c in layouts}):
            result["profile" + ("+compile" if compiled else "")] = profile_steps(model, prompts, args, compiled)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
