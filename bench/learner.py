"""Long-context learner throughput on one GPU: tokens/s, MFU and peak memory of a real training step.

What is timed (one step = forward + backward + optimizer step, on one sequence of T tokens whose
last R tokens are the response carrying the loss):
  hf      plain transformers: model(input_ids, labels=...) with SDPA, activation checkpointing and
          the default loss (full-vocab logits for every position, upcast to float32), AdamW (foreach);
  golong  golong.learner.Learner.train_step on a Sample: packed row, log-probs of the response
          tokens only in chunks, PPO-clip loss, grad clip, AdamW; variants switch one setting at a
          time (checkpoint policy, fp32 master weights, fused AdamW, LoRA, KSA).
Models are Qwen3-shaped with random weights (shapes from the public model cards).

Model FLOPs of one step (standard MFU: recomputation in backward is NOT counted; the same count for
every variant of a shape and length, so MFU ratios are speed ratios):
  N        = layers * (H*(Hq*D) + 2*H*(Hkv*D) + (Hq*D)*H + 3*H*I) + V*H   (projections, MLP, the tied
             embedding / LM head once; norms are negligible)
  F_dense  = k * N * T                                                     (k = 6: forward 2 + backward 4;
             k = 4 with LoRA: no weight gradients of the frozen base, adapter FLOPs not counted)
  F_attn   = 6 * layers * (Hq*D) * T^2      (causal: QK^T and PV over the T^2/2 visible pairs,
             2 FLOPs per multiply-add, forward + 2x backward)
  mfu      = (F_dense + F_attn) / step_time / 990e12   (H200 dense bf16 peak)
  mfu_palm = the same with the PaLM attention term 12 * layers * (Hq*D) * T^2 (full T x T matrix,
             causal masking not discounted); this convention reads higher at long T.
The hf baseline numbers quoted for this issue (28.5% at 8K, 32.8% at 32K) match `mfu`.
KSA variants are scored against the same full-attention model FLOPs (so their "MFU" is throughput
relative to the dense model, not hardware utilisation).

With --group G each step trains G responses of R tokens to one prompt of T - R tokens (a GRPO
group): golong packs them behind one copy of the prompt (optim.share_prompts; --no-share packs each
sequence alone), the hf baseline runs the G sequences one after another with gradient accumulation.
tokens/s then counts G * T (each sequence in full); MFU is left out (the work done depends on sharing).
With --vary (golong, --group) every step's group has new lengths, the same for every variant: the prompt
up to 1/16 shorter, each response up to half shorter, as a real run's lengths change from step to step;
what a new length costs (a FlexAttention bucket's compile, a cuDNN plan) is then in the timed steps, and
tokens/s is left out.

    python bench/learner.py --device cpu --tiny                         # smoke test on CPU
    python bench/learner.py --runs 1.7b:32768:hf,1.7b:32768:golong_sac --out bench/results/learner.json

Each run is wrapped so an out-of-memory error is recorded and the next run goes on; results are
written to --out after every run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEAK_FLOPS = 990e12  # H200 SXM dense bf16, vendor datasheet

SHAPES = {  # Qwen3 model cards: hidden, layers, q heads, kv heads, head_dim, intermediate; vocab 151936, tied
    "0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=3072),
    "1.7b": dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=6144),
    "4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=9728),
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128),
}
VOCAB = {"tiny": 512}

# one setting changed at a time; "prev" is the learner as it was before this benchmark (fp32 master
# weights under bf16 autocast, every layer fully recomputed, foreach AdamW). master: True = float32
# model under autocast, "optimizer" = bf16 model + float32 copies in the optimizer, False = pure bf16
VARIANTS: dict[str, dict] = {
    "hf": dict(kind="hf"),
    "golong_prev": dict(ckpt="full", master=True, fused=False),
    "golong_fused": dict(ckpt="full", master=True, fused=True),
    "golong_sac": dict(ckpt="save_attention", master=True, fused=True),
    "golong_bf16_full": dict(ckpt="full", master=False, fused=True),
    "golong_bf16_sac": dict(ckpt="save_attention", master=False, fused=True),
    "golong_nockpt": dict(ckpt="off", master=True, fused=True),
    "golong_bf16_nockpt": dict(ckpt="off", master=False, fused=True),
    "golong_optmaster_sac": dict(ckpt="save_attention", master="optimizer", fused=True),
    "golong_optmaster_full": dict(ckpt="full", master="optimizer", fused=True),
    "golong_half_ckpt": dict(ckpt="save_attention", ckpt_layers="half", master=True, fused=True),
    "golong_lora_sac": dict(ckpt="save_attention", master=True, fused=True, lora=True),
    "golong_lora_full": dict(ckpt="full", master=True, fused=True, lora=True),
    "golong_bf16_nockpt_compile": dict(ckpt="off", master=False, fused=True, compile=True),
    "golong_optmaster_nockpt_compile": dict(ckpt="off", master="optimizer", fused=True, compile=True),
    "golong_optmaster_sac_compile": dict(ckpt="save_attention", master="optimizer", fused=True, compile=True),
    # the same with optim.flex_autotune: FlexAttention's forward / backward tiles timed per shape (--group)
    "golong_optmaster_sac_compile_autotune": dict(ckpt="save_attention", master="optimizer", fused=True, compile=True,
                                                  autotune=True),
    # ... and with optim.shared_prompt_kernel sdpa (the shared rows piece by piece through SDPA, kept outputs)
    "golong_optmaster_sac_compile_sdpa": dict(ckpt="save_attention", master="optimizer", fused=True, compile=True,
                                              kernel="sdpa"),
    "golong_optmaster_full_compile": dict(ckpt="full", master="optimizer", fused=True, compile=True),
    "golong_lora_sac_compile": dict(ckpt="save_attention", master=True, fused=True, lora=True, compile=True),
    "ksa_sac": dict(ckpt="save_attention", master=True, fused=True, ksa=True),
    "ksa_bf16_sac": dict(ckpt="save_attention", master=False, fused=True, ksa=True),
    "ksa_lora_sac": dict(ckpt="save_attention", master=True, fused=True, ksa=True, lora=True),
    "ksa_optmaster_sac_compile": dict(ckpt="save_attention", master="optimizer", fused=True, ksa=True, compile=True),
}

PLANS = {
    "tiny": "tiny:256:hf,tiny:256:golong_prev,tiny:256:golong_sac,tiny:256:golong_bf16_nockpt,"
            "tiny:256:golong_half_ckpt,tiny:256:golong_lora_sac,tiny:256:ksa_bf16_sac,tiny:256:golong_bf16_nockpt_compile",
    "ablate": "1.7b:8192:hf,1.7b:8192:golong_prev,1.7b:32768:hf,1.7b:32768:golong_prev,1.7b:32768:golong_fused,"
              "1.7b:32768:golong_sac,1.7b:32768:golong_bf16_sac,1.7b:32768:golong_nockpt,"
              "1.7b:32768:golong_bf16_nockpt,4b:131072:golong_lora_sac,1.7b:32768:ksa_sac",
    "sweep": "1.7b:32768:ksa_bf16_sac,1.7b:8192:golong_sac,1.7b:8192:golong_bf16_nockpt,1.7b:32768:golong_half_ckpt,"
             "1.7b:65536:golong_sac,1.7b:131072:golong_sac,4b:131072:ksa_lora_sac,0.6b:32768:golong_sac,"
             "4b:32768:golong_sac,0.6b:131072:golong_sac,1.7b:32768:golong_bf16_nockpt_compile",
    "compiled": "1.7b:32768:golong_optmaster_nockpt_compile,1.7b:32768:golong_optmaster_sac_compile,"
                "1.7b:8192:golong_optmaster_nockpt_compile,1.7b:131072:golong_optmaster_sac_compile,"
                "4b:32768:golong_optmaster_sac_compile,4b:131072:golong_lora_sac_compile",
    "next": "1.7b:8192:golong_optmaster_sac,1.7b:32768:golong_optmaster_sac,1.7b:8192:golong_prev,"
            "1.7b:8192:golong_fused,1.7b:32768:golong_bf16_nockpt_compile,4b:131072:golong_optmaster_full,"
            "0.6b:131072:golong_sac,1.7b:32768:ksa_sac",
}


def qwen3_config(shape: str):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=VOCAB.get(shape, 151936), tie_word_embeddings=True, rope_theta=1e6,
        max_position_embeddings=262144, rms_norm_eps=1e-6, use_cache=False, **SHAPES[shape],
    )


def model_flops(shape: str, tokens: int, lora: bool = False) -> dict[str, float]:
    """Model FLOPs of one training step (formula in the module docstring; no recomputation)."""
    s, v = SHAPES[shape], VOCAB.get(shape, 151936)
    h, layers, inter = s["hidden_size"], s["num_hidden_layers"], s["intermediate_size"]
    qd, kvd = s["num_attention_heads"] * s["head_dim"], s["num_key_value_heads"] * s["head_dim"]
    n = layers * (h * qd + 2 * h * kvd + qd * h + 3 * h * inter) + v * h
    dense = (4 if lora else 6) * n * tokens
    attn = 6 * layers * qd * tokens**2
    return {"params": n, "dense": dense, "attn": attn, "total": dense + attn, "total_palm": dense + 2 * attn}


def score(rec: dict) -> dict:
    """Add tokens/s, model TFLOP and MFU to a timed run record (step_s, shape, tokens, settings)."""
    if rec.get("status") != "ok":
        return rec
    t = rec["step_s"]
    if rec.get("group", 1) > 1:
        if not rec.get("vary_lengths"):
            rec.update(tokens_per_s=round(rec["group"] * rec["tokens"] / t, 1))
        return rec
    f = model_flops(rec["shape"], rec["tokens"], lora=bool(rec["settings"].get("lora")))
    rec.update(tokens_per_s=round(rec["tokens"] / t, 1), model_tflop=round(f["total"] / 1e12, 2),
               mfu=round(f["total"] / t / PEAK_FLOPS, 4), mfu_palm=round(f["total_palm"] / t / PEAK_FLOPS, 4))
    rec.pop("mfu_causal", None)
    rec.pop("mfu_all_logits", None)
    return rec


def build_model(shape: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        return AutoModelForCausalLM.from_config(qwen3_config(shape), dtype=dtype, attn_implementation="sdpa")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _tokens(shape: str, tokens: int, response: int, seed: int = 0) -> tuple[list[int], list[int]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB.get(shape, 151936), (tokens,), generator=g).tolist()
    return ids[: tokens - response], ids[tokens - response :]


def hf_step_fn(shape: str, tokens: int, response: int, device: str, group: int = 1):
    """Plain transformers baseline: bf16 weights, SDPA, checkpointing, labels on the response, AdamW."""
    model = build_model(shape, device, torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    prompt, _ = _tokens(shape, tokens, response)
    batch = []
    for g in range(group):  # G responses to the one prompt, one sequence after another
        ids = torch.tensor([prompt + _tokens(shape, tokens, response, seed=g)[1]], device=device)
        labels = ids.clone()
        labels[:, : len(prompt)] = -100
        batch.append((ids, labels))

    def step() -> None:
        for ids, labels in batch:
            (model(input_ids=ids, labels=labels).loss / group).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, {"trainable_params": sum(p.numel() for p in model.parameters())}


def golong_step_fn(shape: str, tokens: int, response: int, device: str, v: dict, group: int = 1, share: bool = True,
                   vary: bool = False):
    from golong.config import AlgoConfig, LoraConfig, ModelConfig, OptimConfig
    from golong.learner import Learner, Sample

    layers = SHAPES[shape]["num_hidden_layers"]
    ckpt_layers = layers // 2 if v.get("ckpt_layers") == "half" else v.get("ckpt_layers")
    ksa = None
    if v.get("ksa"):
        ksa = {"windows": None, "impl": "triton" if device.startswith("cuda") else "reference"}  # None = 3:1 hybrid
    mcfg = ModelConfig(
        path=f"bench:{shape}", dtype="bfloat16", attn_implementation="sdpa",
        gradient_checkpointing=v["ckpt"] != "off",
        checkpoint_policy=v["ckpt"] if v["ckpt"] != "off" else "full", checkpoint_layers=ckpt_layers,
        lora=LoraConfig(r=16, alpha=32) if v.get("lora") else None, ksa=ksa, compile=bool(v.get("compile")),
    )
    held = v["master"] == "optimizer"  # float32 copies in the optimizer, bf16 model
    budget = tokens - response + group * response if share else tokens  # one group, or one sequence, per micro-batch
    ocfg = OptimConfig(lr=1e-6, micro_batch_tokens=budget, share_prompts=share, fp32_master_weights=bool(v["master"]),
                       master_weights="optimizer" if held else "model", flex_autotune=bool(v.get("autotune")),
                       shared_prompt_kernel=v.get("kernel", "flex"))
    # the learner casts to the dtype it trains in; building in bf16 keeps the transient small
    fp32_model = v["master"] is True and not v.get("lora")
    base = build_model(shape, device, torch.float32 if fp32_model else torch.bfloat16)
    learner = Learner(mcfg, ocfg, AlgoConfig(), device=device, policy=(base, None))
    if not v.get("fused", True):  # the optimizer as the learner built it before (foreach, not fused)
        params = [p for p in learner.model.parameters() if p.requires_grad]
        learner.optimizer = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), weight_decay=0.1,
                                              foreach=device.startswith("cuda"))
        learner.scheduler = torch.optim.lr_scheduler.LambdaLR(learner.optimizer, lambda s: 1.0)
    prompt, _ = _tokens(shape, tokens, response)
    responses = [_tokens(shape, tokens, response, seed=g)[1] for g in range(group)]
    trainable = sum(p.numel() for p in learner.model.parameters() if p.requires_grad)
    steps = iter(range(10**9))

    def samples_at(step: int) -> list[Sample]:
        """The step's group; with vary, shortened by lengths drawn from the step's index (module docstring)."""
        rng = random.Random(step)
        cut = (lambda n, part: n - rng.randrange(n // part + 1)) if vary else (lambda n, part: n)
        p = prompt[: cut(len(prompt), 16)]
        return [Sample(prompt_ids=p, response_ids=r[: cut(len(r), 2)], advantage=1.0 - g % 2,
                       group_id=0 if share else None) for g, r in enumerate(responses)]

    def step() -> None:
        learner.train_step(samples_at(next(steps)))

    return step, {"trainable_params": trainable, "opt_fused": bool(learner.optimizer.defaults.get("fused"))}


def run_one(shape: str, tokens: int, variant: str, device: str, response: int, steps: int,
            group: int = 1, share: bool = True, vary: bool = False) -> dict:  # fmt: skip
    v = VARIANTS[variant]
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if v.get("kind") == "hf":
        step, info = hf_step_fn(shape, tokens, response, device, group)
    else:
        step, info = golong_step_fn(shape, tokens, response, device, v, group, share, vary)
    _sync(device)
    build_s = time.perf_counter() - t0
    times = []
    t = time.perf_counter()
    step()  # warm-up: kernel selection, Triton compiles, optimizer state allocation
    _sync(device)
    warm_s = time.perf_counter() - t
    n = steps if vary else 1 if warm_s > 20 else steps
    for _ in range(n):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    out = {
        "status": "ok", "build_s": round(build_s, 2), "warmup_s": round(warm_s, 3),
        "step_times_s": [round(x, 4) for x in times], "step_s": round(statistics.median(times), 4), **info,
    }
    if device.startswith("cuda"):
        out["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return out


def _cleanup(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def environment(device: str) -> dict:
    import transformers

    env = {"date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
           "transformers": transformers.__version__, "device": device, "peak_flops": PEAK_FLOPS}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_mem_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
    return env


def parse_runs(spec: str) -> list[tuple[str, int, str]]:
    runs = []
    for item in spec.split(","):
        shape, length, variant = item.strip().split(":")
        if shape not in SHAPES or variant not in VARIANTS:
            raise SystemExit(f"bad run {item!r}: shapes {list(SHAPES)}, variants {list(VARIANTS)}")
        runs.append((shape, int(length), variant))
    return runs


def table(results: list[dict]) -> str:
    head = f"{'shape':>5} {'tokens':>7} {'variant':<20} {'status':<6} {'step_s':>7} {'tok/s':>8} {'MFU':>6} {'palm':>6} {'peakGB':>7}"
    lines = [head]
    for r in results:
        lines.append(
            f"{r['shape']:>5} {r['tokens']:>7} {r['variant']:<20} {r['status']:<6} {r.get('step_s', ''):>7} "
            f"{r.get('tokens_per_s', ''):>8} {r.get('mfu', ''):>6} {r.get('mfu_palm', ''):>6} {r.get('peak_gb', ''):>7}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny model and lengths (CPU smoke test)")
    ap.add_argument("--runs", default=None, help="comma list of shape:tokens:variant, or a plan name: " + ", ".join(PLANS))
    ap.add_argument("--response", type=int, default=2048, help="response tokens carrying the loss (the last R)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (1 if the warm-up took > 20 s)")
    ap.add_argument("--group", type=int, default=1, help="responses per prompt trained in one step (a GRPO group)")
    ap.add_argument("--no-share", action="store_true", help="with --group: pack each sequence alone (optim.share_prompts: false)")
    ap.add_argument("--vary", action="store_true", help="with --group: new prompt and response lengths every step (golong variants)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no new run after this many seconds")
    ap.add_argument("--out", default="bench/results/learner.json")
    ap.add_argument("--rescore", default=None, help="recompute tokens/s and MFU of an existing result file, then exit")
    args = ap.parse_args()
    if args.rescore:
        doc = json.loads(Path(args.rescore).read_text())
        doc["results"] = [score(r) for r in doc["results"]]
        Path(args.rescore).write_text(json.dumps(doc, indent=1))
        print(table(doc["results"]))
        return
    spec = args.runs or ("tiny" if args.tiny else "ablate")
    runs = parse_runs(PLANS.get(spec, spec))
    if args.tiny:
        runs = [("tiny", min(t, 512), v) for _, t, v in runs]
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"environment": environment(args.device), "response_tokens": args.response, "results": []}
    t_start = time.perf_counter()
    for shape, tokens, variant in runs:
        response = min(args.response, tokens // 4)
        rec = {"shape": shape, "tokens": tokens, "response_tokens": response, "variant": variant, "settings": VARIANTS[variant],
               "group": args.group, "share_prompts": not args.no_share, "vary_lengths": args.vary}
        if time.perf_counter() - t_start > args.budget_s:
            rec["status"] = "skipped (time budget)"
        else:
            try:
                rec.update(run_one(shape, tokens, variant, args.device, response, args.steps, args.group, not args.no_share,
                                   args.vary))
                score(rec)
            except torch.OutOfMemoryError as e:
                rec.update(status="oom", error=str(e).splitlines()[0][:300])
            except Exception as e:  # noqa: BLE001  (one failing configuration must not lose the others)
                rec.update(status="error", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                           detail=str(e)[:4000])
                traceback.print_exc()
            if args.device.startswith("cuda") and rec["status"] != "ok":
                rec["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        _cleanup(args.device)
        doc["results"].append(rec)
        out_path.write_text(json.dumps(doc, indent=1))
        print(table([rec]).splitlines()[1], rec.get("error", ""), flush=True)
    fits: dict[str, int] = {}
    for r in doc["results"]:
        if r["status"] == "ok":
            key = f"{r['shape']}:{r['variant']}"
            fits[key] = max(fits.get(key, 0), r["tokens"])
    doc["longest_ok"] = fits
    out_path.write_text(json.dumps(doc, indent=1))
    print(table(doc["results"]))
    print(f"total {time.perf_counter() - t_start:.1f} s; written {out_path}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
    sys.stdout.flush()
    os._exit(0)  # results are written; skip interpreter teardown (inductor's worker shutdown can hang)
