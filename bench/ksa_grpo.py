"""GRPO with TMN-Reweight on the hybrid-KSA policy vs the full-attention policy, same generated tasks.

The policies are the models bench/ksa_replication.py trained (`--save-models DIR`: DIR/full, DIR/ksa),
or, without --models, fresh random models of the replication's shape. Both get the same budget: the
same steps, the same prompts per step (drawn from seed (seed, step, task)), the same group size G.

One step, per policy (golong's inline trainer loop, written out):
  1. prompts: `prompts_per_task` single-query prompts of each task (needle, kv, hop2, count; see
     ksa_replication.make_batch, full difficulty) at `--length` tokens;
  2. generate G completions each with golong's engine (`static`: static K/V with the KSA ring + summary
     store, CUDA graphs; `--engine loop`: the transformers decode loop with KSACache), temperature 1,
     max_new_tokens = answer length + 1;
  3. reward: exact match, 1 if the first A response tokens equal the A answer tokens, else 0;
  4. advantages: golong.algos.compute_advantages('tmn_reweight', rewards, groups, tasks) (each
     bench task its own reward type; alpha 0.8, gamma 1): reward-type-level normalisation with the
     difficulty weight;
  5. dynamic sampling without refill: groups whose rewards are all equal (zero advantage) are dropped
     (off in --smoke, where a random policy scores 0 everywhere and the step would train nothing);
  6. golong.learner.Learner.train_step (PPO-clip 0.2/0.28, dual clip 3, token-mean, one update per
     batch, AdamW, bf16 weights with float32 master copies on the GPU);
  7. weights: the engine samples from the learner's own model object (golong's inline default,
     cluster.share_weights), so there is nothing to copy after the update.
Logged per step: per-task mean reward, generation / train / step time, groups kept, learner metrics.
Before and after training: greedy (teacher-forced) held-out accuracy per task at --length.

Run (GPU):   bench/run_h200.sh ksagrpo   (--models /tmp/ksa_models --steps 60 --lr 3e-4 --prompts-per-task 8;
             on an H100, 2026-12-05, with --steps 80 --lr 1e-4 and 4 prompts per task no reward moved:
             bench/results/h100_2026-12-05c/)
CPU check:   PYTHONPATH=. python bench/ksa_grpo.py --smoke --out /tmp/grpo
Writes results.json into --out, rewritten after every step; bench/ksa_report.py draws the plots.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ksa_replication, also when imported by tests

import ksa_replication as rep  # noqa: E402

from ksa import is_ksa  # noqa: E402

POLICIES = ("full", "ksa")


def load_policy(models: str | None, name: str, shape: str, device: str, impl: str, seed: int):
    """(model fp32 on CPU, tokenizer): DIR/name saved by ksa_replication, or a fresh random model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ksa  # noqa: F401  (registers the ksa_* model types with the Auto classes)

    if models is None:
        model = rep.build_models(shape, 2 if shape == "smoke" else 16, impl, seed)[name]
        tok = rep.build_tokenizer()
    else:
        folder = Path(models) / name
        if not (folder / "config.json").is_file():
            raise SystemExit(f"{folder} holds no saved model; run ksa_replication.py --save-models {models} first")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder)
    if is_ksa(model.config):
        model.config.ksa_impl = impl  # the kernel of this machine, whatever the saving one used
    else:
        model.config._attn_implementation = "sdpa"
    model.generation_config.eos_token_id = rep.EOS
    model.generation_config.pad_token_id = rep.PAD
    return model, tok


def step_prompts(seed: int, step: int, per_task: int, length: int, tasks=rep.TASKS):
    """[(task, prompt ids, answer ids)] of one step, the same for every policy (a task's prompts do not
    depend on which other tasks are trained)."""
    out = []
    for t, task in enumerate(rep.TASKS):
        if task not in tasks:
            continue
        prompts, answers = rep.prompt_and_answer(np.random.default_rng([seed, step, t]), per_task, length, task)
        out += [(task, p.tolist(), a.tolist()) for p, a in zip(prompts, answers, strict=True)]
    return out


def exact_match(response: list[int], answer: list[int]) -> float:
    """1.0 when the response starts with the answer tokens (what follows, <eos> or not, is ignored)."""
    return float(response[: len(answer)] == answer)


def heldout_accuracy(model, length: int, rows: int, device: str) -> dict[str, float]:
    """Greedy accuracy per task on held-out multi-query sequences of `length` tokens (teacher-forced)."""
    plan = rep.Plan("default", [(length, rep.MAX_PAIRS, 1.0)], 1, length, [length], rows, max(length, 65536))
    acc = rep.evaluate(model, plan, device)[str(length)]
    model.train()
    return acc


def run_policy(name: str, args, budget_s: float, on_step=None) -> dict:
    from golong.algos import compute_advantages
    from golong.config import AlgoConfig, ModelConfig, OptimConfig
    from golong.learner import Learner, Sample
    from golong.rollout import EngineConfig, SamplingParams, make_engine

    cuda = args.device.startswith("cuda")
    impl = args.impl or ("triton" if cuda else "reference")
    model, tok = load_policy(args.models, name, "smoke" if args.smoke else "default", args.device, impl, args.seed)
    mcfg = ModelConfig(path=str(Path(args.models or "fresh") / name), dtype="bfloat16" if cuda else "float32")
    ocfg = OptimConfig(lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95), grad_clip=1.0,
                       micro_batch_tokens=args.micro_batch_tokens, master_weights="optimizer")
    acfg = AlgoConfig(estimator="tmn_reweight", estimator_params={"alpha": 0.8, "gamma": 1.0})
    learner = Learner(mcfg, ocfg, acfg, seed=args.seed, device=args.device,
                      temperature=1.0, policy=(model, tok))
    policy = learner.model
    rows = args.prompts_per_task * len(args.tasks) * args.group
    engine = make_engine(EngineConfig(args.engine, batch_size=rows, max_len=args.length + 4, device=args.device),
                         policy, tok)
    row: dict = {"model_type": policy.config.model_type, "engine": type(engine).__name__, "steps": []}
    row["acc_before"] = heldout_accuracy(policy, args.length, args.eval_rows, args.device)
    if on_step:
        on_step(row)
    t_start = time.perf_counter()
    for step in range(args.steps):
        if time.perf_counter() - t_start > budget_s:
            row["stopped_by_budget"] = step
            break
        t0 = time.perf_counter()
        items = step_prompts(args.seed, step, args.prompts_per_task, args.length, args.tasks)
        params = SamplingParams(max_new_tokens=max(rep.ANSWER_LEN.values()) + 1, temperature=1.0,
                                seed=args.seed * 100_003 + step)
        rep.sync(args.device)
        t_gen = time.perf_counter()
        groups = engine.generate([p for _, p, _ in items], args.group, params)
        rep.sync(args.device)
        gen_s = time.perf_counter() - t_gen
        comps = [c for g in groups for c in g]
        rewards = [exact_match(c.response_ids, a) for (_, _, a), g in zip(items, groups, strict=True) for c in g]
        tasks = [t for t, _, _ in items for _ in range(args.group)]
        group_ids = [i for i in range(len(items)) for _ in range(args.group)]
        adv = compute_advantages("tmn_reweight", torch.tensor(rewards, dtype=torch.float64), group_ids, tasks,
                                 alpha=0.8, gamma=1.0).tolist()
        keep = [i for i in range(len(items))  # dynamic sampling: groups whose rewards differ
                if not args.dynamic_sampling or len(set(rewards[i * args.group : (i + 1) * args.group])) > 1]
        samples = [Sample(prompt_ids=comps[j].prompt_ids, response_ids=comps[j].response_ids, advantage=adv[j],
                          sampler_logprobs=comps[j].logprobs, reward_type=tasks[j])
                   for i in keep for j in range(i * args.group, (i + 1) * args.group)]
        t_train = time.perf_counter()
        metrics = learner.train_step(samples) if samples else {}
        rep.sync(args.device)
        train_s = time.perf_counter() - t_train
        rec = {"step": step, "gen_s": gen_s, "train_s": train_s, "step_s": time.perf_counter() - t0,
               "groups_kept": len(keep), "groups": len(items),
               "reward": {t: float(np.mean([r for r, tt in zip(rewards, tasks, strict=True) if tt == t]))
                          for t in args.tasks},
               "reward_all": float(np.mean(rewards)),
               **{k: metrics[k] for k in ("loss", "grad_norm", "entropy", "drift", "clip_frac") if k in metrics}}
        row["steps"].append(rec)
        if on_step:  # results.json after every step: a run cut short keeps its reward curve
            on_step(row)
        print(f"  [{name}] step {step:3d} reward " + " ".join(f"{t} {v:.2f}" for t, v in rec["reward"].items())
              + f" | kept {len(keep)}/{len(items)} gen {gen_s:.2f}s train {train_s:.2f}s", flush=True)
    row["train_loop_s"] = time.perf_counter() - t_start
    row["acc_after"] = heldout_accuracy(policy, args.length, args.eval_rows, args.device)
    done = row["steps"][1:] or row["steps"]  # the first step pays for compilation / warm-up
    for key in ("gen_s", "train_s", "step_s"):
        row[f"mean_{key}"] = float(np.mean([s[key] for s in done])) if done else None
    del learner, engine, policy, model
    if cuda:
        torch.cuda.empty_cache()
    return row


def print_table(result: dict) -> None:
    print(f"\nGRPO + TMN-Reweight at {result['config']['length']} tokens, {result['config']['steps']} steps, "
          f"{result['config']['prompts_per_task']} prompts/task x G={result['config']['group']}")
    tasks = result["config"]["tasks"]
    head = " ".join(f"{t + ' 1st/last':>16}" for t in tasks)
    print(f"{'policy':>7} {head} {'acc before->after (all)':>24} {'gen s':>6} {'train s':>7} {'step s':>7}")
    for name, row in result["policies"].items():
        steps = row["steps"]
        k = max(1, len(steps) // 4)  # mean reward of the first / last quarter of the steps

        def q(part, t):
            return float(np.mean([s["reward"][t] for s in part])) if part else float("nan")

        cells = " ".join(f"{q(steps[:k], t):>7.2f} {q(steps[-k:], t):>8.2f}" for t in tasks)
        acc = f"{row['acc_before']['all']:.2f} -> {row['acc_after']['all']:.2f}"
        print(f"{name:>7} {cells} {acc:>24} {row['mean_gen_s'] or 0:>6.2f} {row['mean_train_s'] or 0:>7.2f} "
              f"{row['mean_step_s'] or 0:>7.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="folder written by ksa_replication.py --save-models (default: fresh random models)")
    ap.add_argument("--out", default="bench/results/ksa_grpo")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (256 tokens, 3 steps)")
    ap.add_argument("--pilot", action="store_true", help="the CPU pilot's scale (512 tokens, 2 prompts/task, G=4, 6 steps)")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps per policy (default 30; smoke 3)")
    ap.add_argument("--length", type=int, default=None, help="prompt length in tokens (default 4096; smoke 256)")
    ap.add_argument("--prompts-per-task", type=int, default=None, help="default 4; smoke 2")
    ap.add_argument("--group", type=int, default=None, help="G (default 8; smoke 4)")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--micro-batch-tokens", type=int, default=None,
                    help="learner micro-batch tokens (default 16384; smoke 1024). The full-attention learner packs "
                         "sequences into one row under a dense block-diagonal mask of this size squared; KSA runs "
                         "a padded batch")
    ap.add_argument("--engine", choices=("static", "loop"), default="static",
                    help="golong's static engine (K/V incl. the KSA ring + summaries, CUDA graphs) or the decode loop")
    ap.add_argument("--impl", default=None, help="KSA kernel (default triton on CUDA, reference on CPU)")
    ap.add_argument("--eval-rows", type=int, default=None, help="held-out sequences for before/after accuracy")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="seconds for all policies' step loops (each gets budget/policies; default 100, smoke none)")
    ap.add_argument("--dynamic-sampling", action=argparse.BooleanOptionalAction, default=None,
                    help="drop groups whose rewards are all equal (default on; smoke: off, so a random policy still trains)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default=",".join(rep.TASKS),
                    help="comma-separated tasks to train on (held-out accuracy still covers every task); e.g. kv "
                         "at 32K, beyond the 8K the policies trained to, where both start near 0.4")
    args = ap.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not args.tasks or set(args.tasks) - set(rep.TASKS):
        ap.error(f"--tasks {','.join(args.tasks)}: choose from {','.join(rep.TASKS)}")
    if args.budget_s is None and not args.smoke:
        args.budget_s = 100.0
    if args.dynamic_sampling is None:
        args.dynamic_sampling = not args.smoke
    preset = 2 if args.smoke else (1 if args.pilot else 0)
    for key, *values in (("steps", 30, 6, 3), ("length", 4096, 512, 256), ("prompts_per_task", 4, 2, 2),
                         ("group", 8, 4, 4), ("eval_rows", 32, 16, 4), ("micro_batch_tokens", 16384, 4096, 1024)):
        if getattr(args, key) is None:
            setattr(args, key, values[preset])
    return args


def main(argv: list[str] | None = None) -> dict:
    return rep.run_args(_run, parse_args(argv))


def _run(args: argparse.Namespace) -> dict:
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if set(policies) - set(rep.VARIANTS):
        sys.exit(f"unknown policy in {policies}; choose from {','.join(rep.VARIANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {"bench": "ksa_grpo", "scale": rep.scale(args),
              "machine": rep.machine_info(args.device),
              "config": {k: v for k, v in vars(args).items() if k != "out"}, "policies": {}}
    budget = (args.budget_s or float("inf")) / len(policies)
    path = out / "results.json"
    for name in policies:
        print(f"policy {name}", flush=True)

        def on_step(row: dict, name=name) -> None:
            result["policies"][name] = row
            rep.write_json(path, result)

        on_step(run_policy(name, args, budget, on_step))
    result["total_s"] = time.perf_counter() - t0
    result["status"] = "done"
    rep.write_json(path, result)
    print_table(result)
    print(f"wrote {path} in {result['total_s']:.1f}s")
    return result


if __name__ == "__main__":
    main()
