"""The GRPO loop. One step:

    prompts   = mixture.sample(P)                        # task mixture, left-truncated prompts
    groups    = rollout G responses per prompt            # + the sampler's log-probs
    rewards   = reward pool (time limit; failures score 0, counted per reward type)
    dynamic sampling: drop groups whose rewards all equal; generate rounds of algo.prompts_per_round
                      prompts until P groups are kept (at most algo.max_generation_rounds rounds)
    A         = compute_advantages(algo.estimator, rewards, groups, reward_types)   # tmn_reweight default
    learner.train_step(samples); sync weights to the engine; log; checkpoint

What it keeps from GRPO / DAPO / GoLongRL: group-relative advantages (any registered estimator),
clip-higher PPO loss with token-mean, dynamic sampling. What it drops: a critic, and (by default) the
KL term. Every step's randomness is seeded from (trainer.seed, step), so a resumed run repeats the
uninterrupted one step for step.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from golong import checkpoint, metrics, runs
from golong.algos import compute_advantages, dynamic_sampling_mask
from golong.cluster import make_cluster
from golong.config import Recipe, RecipeError
from golong.learner import Sample
from golong.mixture import Mixture, Prompt
from golong.rewarding import RewardPool, RewardResult
from golong.rollout.base import Completion, SamplingParams


@dataclass
class Group:
    """One prompt with its G responses and their rewards."""

    prompt: Prompt
    completions: list[Completion]
    results: list[RewardResult]

    @property
    def rewards(self) -> list[float]:
        return [r.score for r in self.results]


@dataclass
class Batch:
    kept: list[Group]
    generated: list[Group]
    rounds: int
    dropped: Counter = field(default_factory=Counter)
    surplus: int = 0  # groups kept beyond prompts_per_step (generated, not trained)


class DynamicSamplingError(RuntimeError):
    """Dynamic sampling could not fill the batch within its rounds (algo.underfilled: error)."""


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """A stable 63-bit seed for (run seed, step, salt)."""
    return (seed * 1_000_003 + step * 7919 + salt * 104_729) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, recipe: Recipe, *, resume: str | Path | None = None, rewards: RewardPool | None = None,
                 quiet: bool = False, overwrite: bool = False, overrides: list[str] | None = None):
        """Set up a run in `trainer.output_dir` (a folder holding another run is refused unless
        `overwrite`), or continue the run in `resume` (`recipe` is then its recorded recipe, see
        golong.runs.resume_recipe). The folder's run.json and recipe.yaml are written first, so a run
        stopped at any later point can be resumed."""
        self.recipe, self.quiet = recipe, quiet
        self.phase: Callable[[str], None] = lambda what: None  # the progress bar's "what the step is doing"
        self.out = Path(resume) if resume else Path(recipe.trainer.output_dir)
        self._saved_step = -1
        self.stop_signal: int | None = None  # set by SIGINT/SIGTERM: save after this step and stop
        ckpt = checkpoint.resume_point(self.out, warn=self._warn) if resume else None
        self._lock, self.cluster = runs.lock(self.out), None
        try:
            self._setup(ckpt, resume is not None, overwrite, overrides, rewards)
        except BaseException:  # a recipe or data error, Ctrl-C in start-up: free the folder and the workers
            try:
                if self.cluster is not None:
                    self.cluster.shutdown()
            finally:
                self._lock.close()
            raise

    def _setup(self, ckpt: Path | None, resume: bool, overwrite: bool, overrides: list[str] | None,
               rewards: RewardPool | None) -> None:
        recipe = self.recipe
        state = checkpoint.load_state(ckpt) if ckpt is not None else None
        self.run_id = runs.record_resume(self.out, overrides) if resume else runs.claim_new(self.out, overrides, overwrite)
        if state is not None and state.get("run_id", self.run_id) != self.run_id:
            raise RecipeError(f"--resume {self.out}: checkpoint {ckpt.name} belongs to run {state['run_id']}, not to "
                              f"this folder's run {self.run_id}; resume the folder it was written in")
        runs.write_recipe(self.out, recipe)
        self.cluster = make_cluster(recipe, rewards)
        self.mixture = Mixture(recipe.data, self.cluster.tokenizer, seed=recipe.data.seed)
        runs.note_tasks(self.out, self.mixture.sources)
        # checkpoints from before warm-start checkpointing were all written after the warm start
        self.warm_done = 0 if state is None else state.get("warm_done", recipe.trainer.warm_start_steps)
        self.warm_logs = [] if state is None else list(state.get("warm_logs", []))
        # the warm start draws from its own copy of the mixture, so RL's data order does not depend on it
        self.warm_mixture = None
        if self.warm_done < recipe.trainer.warm_start_steps:
            self.warm_mixture = Mixture(recipe.data, self.cluster.tokenizer, seed=recipe.data.seed + 7919)
            if state is not None and "warm_mixture" in state:
                self.warm_mixture.load_state_dict(state["warm_mixture"])
        self.step, history = 0, []
        if state is not None:
            self.cluster.load_learner(ckpt / "learner")
            self.cluster.sync_weights()
            self.mixture.load_state_dict(state["mixture"])
            checkpoint.set_rng_state(state["rng"])
            self.step, history = state["step"], state["metrics"]
            where = f"step {self.step}" if self.step or self.warm_done >= recipe.trainer.warm_start_steps else \
                f"warm-start step {self.warm_done}/{recipe.trainer.warm_start_steps}"
            self._say(f"resumed {self.out} from {ckpt.name} ({where})")
        t = recipe.trainer
        self.log = metrics.MetricsLog(self.out, tensorboard=t.tensorboard, wandb=t.wandb, history=history,
                                      config=recipe.model_dump(mode="json"))
        self.eval_items = self._eval_items() if recipe.eval.every else []

    # --- the loop --------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        total = self.recipe.trainer.steps
        restore = self._catch_stop_signals()
        try:
            if self.warm_done < self.recipe.trainer.warm_start_steps:
                self.warm_start()
            with self._progress(total) as bar:
                first, hint = self.step, first_step_hint(self.recipe)
                self.phase = lambda what: bar.phase(f"{what} ({hint})" if hint and self.step == first else what)
                while self.step < total and self.stop_signal is None:
                    record = self.train_one_step()
                    self.step += 1
                    if self.recipe.eval.every and (self.step % self.recipe.eval.every == 0 or self.step == total):
                        self.phase("held-out evaluation")
                        record.update(self.evaluate())
                    if self.recipe.data.skip_invalid:
                        record["skipped_invalid_rows"] = float(self.mixture.skipped_invalid)
                    self.log.log(self.step, record)
                    bar.advance(metrics.summary_line(self.step, total, record))
                    if self.step % self.recipe.trainer.save_every == 0 or self.step == total or self.stop_signal:
                        self.save()
            if self.stop_signal is not None:
                import signal

                if self._saved_step != self.step:  # the signal came after this step's save decision
                    self.save()
                self._warn(f"stopped by {signal.Signals(self.stop_signal).name} after "
                           f"{self.progress_text()}; checkpoint saved")
        finally:
            restore()
            self.log.close()
            self.cluster.shutdown()
            self._lock.close()
        return self.log.history

    def progress_text(self) -> str:
        """Where the run stands: 'step 5/30', or 'warm-start step 3/8' before RL began."""
        t = self.recipe.trainer
        if self.step == 0 and self.warm_done < t.warm_start_steps:
            return f"warm-start step {self.warm_done}/{t.warm_start_steps}"
        return f"step {self.step}/{t.steps}"

    def train_one_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        seed_everything(step_seed(self.recipe.trainer.seed, self.step))
        batch = self.collect()
        t1 = time.perf_counter()
        samples, advantages = self.make_samples(batch.kept)
        self.phase("learner")
        train = self.cluster.train_step(samples) if samples else {}
        t2 = time.perf_counter()
        self.phase("weight sync")
        self.cluster.sync_weights()
        t3 = time.perf_counter()
        return self.step_metrics(batch, samples, advantages, train,
                                 {"rollout_time": t1 - t0, "train_time": t2 - t1, "sync_time": t3 - t2,
                                  "step_time": t3 - t0})

    # --- held-out evaluation (recipe `eval:`) -----------------------------------------------
    def _eval_items(self):
        from golong.evaluate import eval_set

        items, _ = eval_set(self.recipe.eval, tokenizer=self.cluster.tokenizer)
        return items

    def evaluate(self) -> dict[str, float]:
        """The current policy on the held-out problems, scored in the run's reward pool; eval/* metrics,
        files in OUT/eval/step_N. Limits the `eval:` section leaves open are the run's own."""
        from golong.evaluate import evaluate_engine
        from golong.report import flat_metrics

        e, r = self.recipe.eval, self.recipe.rollout
        settings = e.model_copy(update={"max_new_tokens": e.max_new_tokens or r.max_new_tokens,
                                        "top_p": r.top_p if e.top_p is None else e.top_p,
                                        "max_prompt_tokens": e.max_prompt_tokens or self.recipe.data.max_prompt_tokens})
        name = f"step_{self.step:06d}"
        results = evaluate_engine(self.cluster, self.cluster.tokenizer, self.eval_items, model=name, settings=settings,
                                  out_dir=self.out / "eval" / name, rewards=self.cluster.rewards)
        return flat_metrics(results, name)

    # --- optional supervised warm start ------------------------------------------------------
    def warm_start(self) -> list[dict[str, float]]:
        """Supervised steps on reference answers before RL (trainer.warm_start_steps).

        On-policy with advantage 1 the PPO-clip loss is -(1/T) sum_t log p(y_t) (ratio 1, inside the
        clip range), so `train_step` on reference responses is a plain token-mean SFT step. Rows come
        from a copy of the mixture with its own seed, so RL's data order is unchanged. A stop signal
        ends it after the current step; either way a checkpoint keeps what it did (a resume continues
        it, or skips it once done).
        """
        import rewards

        t = self.recipe.trainer
        tok = self.cluster.tokenizer
        eos = tok.eos_token_id
        for i in range(self.warm_done, t.warm_start_steps):
            seed_everything(step_seed(t.seed, -1 - i))
            samples = []
            for p in self.warm_mixture.sample(t.warm_start_prompts):
                answer = warm_start_answer(rewards.oracle_response(p.row))
                ids = tok.encode(answer, add_special_tokens=False)[: self.recipe.rollout.max_new_tokens - 1]
                response = [*ids, eos]
                # A "sampler" that put probability 1 on every reference token: the learner's drift
                # against it, mean |0 - log p|, is the token-mean NLL before this step's update.
                samples.append(Sample(prompt_ids=p.ids, response_ids=response, advantage=1.0,
                                      sampler_logprobs=[0.0] * len(response), reward_type=p.reward_type,
                                      sampled=False))
            log = self.cluster.train_step(samples)
            log["nll"] = log.get("drift", float("nan"))
            self.warm_logs.append({k: float(v) for k, v in log.items()})
            self.warm_done = i + 1
            self._say(f"warm start {i + 1}/{t.warm_start_steps}: reference-answer NLL {log['nll']:.3f}")
            if self.stop_signal is not None:
                break
        self.save()
        return self.warm_logs

    # --- rollout + reward + dynamic sampling -------------------------------------------------
    def collect(self) -> Batch:
        """Generate and score groups. With dynamic sampling (GoLongRL / DAPO): rounds of
        `algo.prompts_per_round` prompts until `prompts_per_step` groups with reward spread are kept,
        at most `algo.max_generation_rounds` rounds; the first `prompts_per_step` kept groups in
        generation order train, and a short batch trains or stops the run (`algo.underfilled`)."""
        r, a = self.recipe.rollout, self.recipe.algo
        batch = Batch(kept=[], generated=[], rounds=0)
        per_round = (a.prompts_per_round or r.prompts_per_step) if a.dynamic_sampling else r.prompts_per_step
        for round_ in range(a.max_generation_rounds if a.dynamic_sampling else 1):
            groups = self.generate_round(self.mixture.sample(per_round), round_)
            batch.generated += groups
            batch.rounds += 1
            if not a.dynamic_sampling:
                batch.kept += groups
                break
            for g, k in zip(groups, self.keep_mask(groups), strict=True):
                if k:
                    batch.kept.append(g)
                else:
                    batch.dropped[g.prompt.reward_type] += 1
            if len(batch.kept) >= r.prompts_per_step:
                break
        batch.surplus = max(0, len(batch.kept) - r.prompts_per_step)
        batch.kept = batch.kept[: r.prompts_per_step]
        if len(batch.kept) < r.prompts_per_step:
            short = (f"dynamic sampling kept {len(batch.kept)} of {r.prompts_per_step} groups in {batch.rounds} rounds "
                     f"of {per_round} prompts at step {self.step + 1}")
            if a.underfilled == "error":
                raise DynamicSamplingError(f"{short}: rewards have no spread within most groups (data too easy or "
                                           "too hard for the policy); raise algo.max_generation_rounds or set "
                                           "algo.underfilled=train")
            if a.dynamic_sampling:
                self._warn(f"{short}; training on those (algo.underfilled=train)")
        return batch

    def generate_round(self, prompts: list[Prompt], round_: int) -> list[Group]:
        r = self.recipe.rollout
        params = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k,
                                seed=step_seed(self.recipe.trainer.seed, self.step, round_ + 1))
        self.phase(f"rollout: {len(prompts)} prompts x {r.group_size}" + (f", round {round_ + 1}" if round_ else ""))
        outputs = self.cluster.generate([p.ids for p in prompts], r.group_size, params)
        self.phase("rewards")
        return self.score(prompts, outputs)

    def score(self, prompts: list[Prompt], outputs: list[list[Completion]]) -> list[Group]:
        rows = [p.row for p, comps in zip(prompts, outputs, strict=True) for _ in comps]
        texts = [c.text for comps in outputs for c in comps]
        results = self.cluster.rewards.score(rows, texts)
        groups, i = [], 0
        for p, comps in zip(prompts, outputs, strict=True):
            groups.append(Group(p, comps, results[i : i + len(comps)]))
            i += len(comps)
        return groups

    @staticmethod
    def keep_mask(groups: list[Group]) -> list[bool]:
        """Per group: do its rewards differ (dynamic sampling keeps only those)?"""
        rewards = [x for g in groups for x in g.rewards]
        ids = [gi for gi, g in enumerate(groups) for _ in g.rewards]
        mask = dynamic_sampling_mask(torch.tensor(rewards, dtype=torch.float64), ids).tolist()
        first = {gi: i for i, gi in reversed(list(enumerate(ids)))}  # first response of each group
        return [bool(mask[first[gi]]) for gi in range(len(groups))]

    # --- advantages -> learner samples ---------------------------------------------------------
    def make_samples(self, groups: list[Group]) -> tuple[list[Sample], list[float]]:
        if not groups:
            return [], []
        a = self.recipe.algo
        rewards = torch.tensor([x for g in groups for x in g.rewards], dtype=torch.float64)
        group_ids = [gi for gi, g in enumerate(groups) for _ in g.completions]
        reward_types = [g.prompt.reward_type for g in groups for _ in g.completions]
        adv = compute_advantages(a.estimator, rewards, group_ids, reward_types, **a.estimator_params).tolist()
        comps = [c for g in groups for c in g.completions]
        samples = [  # each carries its group id, so the learner packs a group behind one copy of its prompt
            Sample(prompt_ids=c.prompt_ids, response_ids=c.response_ids, advantage=float(x),
                   sampler_logprobs=c.logprobs, reward_type=t, group_id=gi)
            for c, x, t, gi in zip(comps, adv, reward_types, group_ids, strict=True)
        ]
        return samples, adv

    # --- metrics, checkpoints, display ---------------------------------------------------------
    def step_metrics(self, batch: Batch, samples: list[Sample], adv: list[float], train: dict[str, float],
                     times: dict[str, float]) -> dict[str, float]:
        records = [
            {"reward_type": g.prompt.reward_type, "reward": res.score, "length": len(c.response_ids), "status": res.status}
            for g in batch.generated for c, res in zip(g.completions, g.results, strict=True)
        ]
        kinds = {g.prompt.reward_type for g in batch.generated}
        truncated = Counter(g.prompt.reward_type for g in batch.generated if g.prompt.truncated)
        tokens = sum(len(c.prompt_ids) + len(c.response_ids) for g in batch.generated for c in g.completions)
        out: dict[str, float] = {}
        out.update(metrics.per_reward_type(records))
        out.update(metrics.mean_abs_by_reward_type([s.reward_type for s in samples], adv))
        out.update(metrics.counts("dropped", batch.dropped, kinds))
        out.update(metrics.counts("truncated", truncated, kinds))
        out.update({k: float(v) for k, v in train.items()})
        out.update(times)
        # the engine's admission in its last generate call (rows decoded at once, their K/V bytes), in either mode
        stats = self.cluster.engine_stats()
        out.update({f"rollout/{k}": float(stats[k]) for k in ("concurrency", "kv_bytes") if k in stats})
        out.update({"groups_kept": float(len(batch.kept)), "groups_generated": float(len(batch.generated)),
                    "groups_surplus": float(batch.surplus), "rounds": float(batch.rounds), "tokens": float(tokens),
                    "tokens_per_s": tokens / max(times["step_time"], 1e-9),
                    "samples_trained": float(len(samples))})
        return out

    def save(self) -> Path:
        self._saved_step = self.step
        state = {"mixture": self.mixture.state_dict(), "metrics": self.log.history, "run_id": self.run_id,
                 "warm_done": self.warm_done, "warm_logs": self.warm_logs}
        if self.warm_mixture is not None:
            state["warm_mixture"] = self.warm_mixture.state_dict()
        return checkpoint.save(self.out, self.step, self.cluster.save_learner, state,
                               keep=self.recipe.trainer.keep_checkpoints)

    def _catch_stop_signals(self):
        """SIGINT/SIGTERM -> finish the current step, checkpoint, stop (a second signal acts as usual).

        Returns a function restoring the previous handlers. Only the main thread can install handlers;
        elsewhere (a trainer run from a worker thread) signals keep their default meaning."""
        import os
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum: int, frame: Any) -> None:
            self.stop_signal = signum
            signal.signal(signum, previous[signum])  # a second Ctrl-C / TERM is not swallowed
            # os.write, not print: a handler may interrupt a buffered write to the same stream
            os.write(2, f"[golong] {signal.Signals(signum).name}: finishing step {self.step + 1}, then saving a "
                        "checkpoint (send it again to stop at once)\n".encode())

        for s in previous:
            signal.signal(s, on_signal)

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        return restore

    def _warn(self, text: str) -> None:
        """A line on stderr even when quiet (resume problems, stop signals)."""
        import sys

        print(f"[golong] {text}", file=sys.stderr, flush=True)

    def _say(self, text: str) -> None:
        if not self.quiet:
            from rich.console import Console

            Console(stderr=True).print(text)

    def _progress(self, total: int):
        return _Progress(total, self.step, quiet=self.quiet)


class _Progress:
    """A rich progress bar with one printed summary line per step and, beside the bar, what the current
    step is doing (`phase`: rollout, rewards, learner, weight sync); no-ops when quiet."""

    def __init__(self, total: int, done: int, quiet: bool):
        self.total, self.done, self.quiet = total, done, quiet

    def __enter__(self) -> _Progress:
        if self.quiet:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[phase]}"))
        self.bar.__enter__()
        self.task = self.bar.add_task("train", total=self.total, completed=self.done, phase="")
        return self

    def advance(self, line: str) -> None:
        if not self.quiet:
            self.bar.console.print(line)
            self.bar.update(self.task, advance=1, phase="")

    def phase(self, what: str) -> None:
        if not self.quiet:
            self.bar.update(self.task, phase=what)

    def __exit__(self, *exc: Any) -> None:
        if not self.quiet:
            self.bar.__exit__(*exc)


def first_step_hint(recipe: Recipe) -> str:
    """What the progress bar adds to each phase of a run's first step: with compiled layers or decode,
    that it compiles (minutes for a long-context policy on a fresh machine); else nothing."""
    return "first step: compiling, minutes on a fresh machine" if recipe.model.compile or recipe.rollout.compile_decode else ""


def warm_start_answer(oracle: str) -> str:
    """The reference answer with its reasoning cut to a bare `<think></think>` (short to generate)."""
    head, sep, tail = oracle.partition("</think>")
    return f"<think></think>\n{tail.lstrip()}" if sep else oracle


def train(recipe: Recipe, resume: str | Path | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Run (or resume) a recipe; returns the metrics of every step."""
    return Trainer(recipe, resume=resume, **kwargs).run()
