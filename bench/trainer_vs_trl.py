"""GRPO step time: golong (inline mode) vs TRL's GRPOTrainer, same model, data, group size, lengths.

Both trainers see the same prompts in the same order (golong's mixture over the 9 generated GoLongRL
capabilities; TRL's dataset is that sequence, unshuffled), G responses per prompt,
P prompts per step, the same response cap, temperature 1, clip 0.2 / 0.28, no KL, GRPO advantages
(TRL's default group scaling) and the same GoLongRL rewards. golong runs without dynamic sampling
(TRL has none), so both train on every group. Runs alternate (golong, TRL, golong, TRL, ...) so slow
drifts of a shared machine hit both; the first step of each run (start-up) is left out of the medians.

tokens/s = (prompt + response tokens of the step's P*G sequences) / step time, for both.

On a GPU both run in bf16: golong with the GPU recipe's learner settings (compiled layers, float32
masters held by the optimizer, activation checkpointing, shared prompts, one group per micro-batch),
TRL with its defaults for GRPO (transformers `generate`, activation checkpointing) and bf16, G
sequences per forward, P accumulation steps per optimizer step (one generation batch = P*G).
`--model qwen3-0.6b` (or 1.7b, 4b) is a random-weight model of that Qwen3 shape with the locally
built tokenizer (bench/train_gpu.py), so the comparison runs without the hub.

    .venv/bin/python bench/trainer_vs_trl.py                      # tiny random model (seconds)
    .venv/bin/python bench/trainer_vs_trl.py --model smollm2-135m --steps 3 --repeats 1
    python bench/trainer_vs_trl.py --model qwen3-0.6b --length 8192 --group 8 --prompts 4 --max-new 256 \
        --steps 3 --repeats 1                                    # one H200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def model_dir(name: str, device: str) -> str:
    if name == "tiny":
        from tests.tiny import save_tiny

        return str(save_tiny(Path(tempfile.mkdtemp(prefix="golong-bench-tiny-"))))
    if name.startswith("qwen3-"):  # random weights of a Qwen3 shape, local tokenizer
        sys.path.insert(0, str(ROOT / "bench"))
        from train_gpu import policy_folder

        return str(policy_folder(name.removeprefix("qwen3-"), Path(tempfile.mkdtemp(prefix="golong-bench-")), device))
    from golong.models import resolve_model_path

    return resolve_model_path(name)


def data_config(args) -> dict:
    return {"sources": [{"generate": "all", "length": args.length, "n": max(2, args.prompts * args.steps)}],
            "max_prompt_tokens": 100_000, "seed": 1}


def make_rows(args, tokenizer) -> list[dict]:
    """The prompts golong draws, in golong's order, so TRL's unshuffled steps see the same prompts."""
    from golong.config import DataConfig
    from golong.mixture import Mixture

    mix = Mixture(DataConfig(**data_config(args)), tokenizer)
    return [p.row for p in mix.sample(args.prompts * args.steps)]


def run_golong(args, path: str, out: Path) -> list[dict]:
    from golong.config import validate_recipe
    from golong.trainer import Trainer

    model, optim = {"path": path}, {"lr": args.lr, "micro_batch_tokens": args.micro_batch_tokens}
    if args.device == "cuda":  # the GPU recipe's learner settings
        model.update(dtype="bfloat16", attn_implementation="sdpa", gradient_checkpointing=True, compile=True)
        optim.update(master_weights="optimizer", micro_batch_tokens=max(args.micro_batch_tokens, 16384,
                                                                        args.length + args.group * args.max_new))
    recipe = validate_recipe({
        "model": model,
        "data": data_config(args),
        "rollout": {"group_size": args.group, "prompts_per_step": args.prompts, "max_new_tokens": args.max_new,
                    "batch_size": args.prompts * args.group},
        "algo": {"estimator": "grpo", "dynamic_sampling": False, "max_generation_rounds": 1, "kl_coef": 0.0},
        "optim": optim,
        "reward": {"workers": 1},
        "cluster": {"mode": "inline"},
        "trainer": {"steps": args.steps, "output_dir": str(out), "save_every": 10_000, "seed": 0},
    })
    t = Trainer(recipe, quiet=True)
    records = []
    try:
        for _ in range(args.steps):
            m = t.train_one_step()
            t.step += 1
            records.append({"step_time": m["step_time"], "tokens": m["tokens"], "reward": m["reward/all"]})
    finally:
        t.cluster.shutdown()
    return records


def run_trl(args, path: str, rows: list[dict], out: Path) -> list[dict]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import rewards

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    gpu = args.device == "cuda"
    model = AutoModelForCausalLM.from_pretrained(path, **({"dtype": torch.bfloat16} if gpu else {}))
    ds = datasets.Dataset.from_list([{"prompt": list(r["prompt"]), "data_source": r["data_source"],
                                      "reward_model": r["reward_model"], "extra_info": r["extra_info"]} for r in rows])
    # one optimizer step = one generation batch of P*G sequences; on a GPU G per forward, P accumulated
    per_forward, accumulate = (args.group, args.prompts) if gpu else (args.prompts * args.group, 1)
    cfg = GRPOConfig(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=per_forward,
        gradient_accumulation_steps=accumulate, num_generations=args.group, steps_per_generation=accumulate,
        max_completion_length=args.max_new, temperature=1.0, top_p=1.0, beta=0.0, epsilon=0.2, epsilon_high=0.28,
        learning_rate=args.lr, loss_type="dapo", use_cpu=not gpu, report_to=[], logging_steps=1, save_strategy="no",
        bf16=gpu, seed=0, shuffle_dataset=False, disable_dropout=True,
    )

    class Timer(TrainerCallback):
        def __init__(self):
            self.records: list[dict] = []
            self._t0 = 0.0

        def on_step_begin(self, *a, **k):
            self._t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.records.append({"step_time": time.perf_counter() - self._t0})

        def on_log(self, a, state, control, logs=None, **k):
            if logs and "num_tokens" in logs and self.records:
                self.records[-1]["num_tokens"] = logs["num_tokens"]
                self.records[-1]["reward"] = logs.get("reward")

    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=rewards.make_trl_reward_func(), args=cfg,
                          train_dataset=ds, processing_class=tok, callbacks=[timer])
    trainer.train()
    prev = 0.0
    for r in timer.records:  # TRL logs the cumulative token count
        total = r.pop("num_tokens", prev)
        r["tokens"], prev = total - prev, total
    return timer.records


def summarize(records: list[dict]) -> dict:
    steady = [r for r in records if not r.get("first")] or records
    times = [r["step_time"] for r in steady]
    tps = [r["tokens"] / r["step_time"] for r in steady if r.get("tokens")]
    return {"median_step_s": statistics.median(times), "median_tokens_per_s": statistics.median(tps) if tps else None,
            "steps_measured": len(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="'tiny' (random, built here), 'smollm2-135m' or a model folder")
    ap.add_argument("--steps", type=int, default=4, help="steps per run (the first is warm-up)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per trainer")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--length", type=int, default=200, help="target prompt tokens of the generated rows")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--micro-batch-tokens", type=int, default=1024,
                    help="golong's packed micro-batch budget (packing uses a dense block-diagonal mask on CPU, "
                         "so attention cost grows with the square of this)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "trainer_vs_trl.json"))
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = model_dir(args.model, args.device)
    rows = make_rows(args, AutoTokenizer.from_pretrained(path))
    runs: dict[str, list[dict]] = {"golong": [], "trl": []}
    result = {"model": args.model, "settings": vars(args), "runs": runs, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(),
                          "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name, fn in (("golong", lambda o: run_golong(args, path, o)), ("trl", lambda o: run_trl(args, path, rows, o))):
                recs = fn(Path(tmp) / f"{name}{rep}")
                recs[0]["first"] = True
                runs[name] += recs
                print(f"{name} run {rep + 1}: " + ", ".join(f"{r['step_time']:.2f}s" for r in recs), flush=True)
                out.write_text(json.dumps(result, indent=2))  # as it goes: a run cut short keeps its steps
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    g, t = summarize(runs["golong"]), summarize(runs["trl"])
    ratio = t["median_step_s"] / g["median_step_s"]
    print(f"\n{'trainer':<8} {'median step (s)':>16} {'tokens/s':>10} {'steps':>6}")
    for name, s in (("golong", g), ("trl", t)):
        tps = f"{s['median_tokens_per_s']:.0f}" if s["median_tokens_per_s"] else "n/a"
        print(f"{name:<8} {s['median_step_s']:>16.3f} {tps:>10} {s['steps_measured']:>6}")
    print(f"golong is {ratio:.2f}x faster per step (TRL median / golong median)")
    result.update(golong=g, trl=t, speedup_step_time=ratio)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")

if __name__ == "__main__":
    main()
