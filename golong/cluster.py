"""Where the roles run: in this process (`cluster.mode: inline`) or as Ray actors (`ray`).

Both cluster kinds give the trainer the same calls:
  generate(prompts, n, params)  rollout role (wakes / sleeps a colocated engine around it)
  train_step(samples)           learner role
  sync_weights()                learner -> rollout engine (Ray: through the object store, never the driver)
  save_learner(path) / load_learner(path)
  engine_stats()                the engine's stats of its last generate call (e.g. concurrency, kv_bytes)
  rewards                       a RewardPool (process pool inline, Ray tasks in Ray mode)
  tokenizer                     for the driver's data mixture

The roles themselves (their builders and Ray actors) are golong.roles. Ray mode puts the learner and
the rollout engine into one placement group (one bundle each, or one shared bundle when colocated on
a GPU). A rollout actor that dies is re-created, given the learner's
current weights, and the generation retried, with a log line saying so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path

from golong.config import Recipe, RecipeError
from golong.rewarding import RewardPool
from golong.roles import (
    LearnerGroup,
    RolloutActor,
    build_engine,
    build_learner,
    engine_stats,
    learner_ranks,
    set_threads,
)
from golong.rollout.base import Completion, SamplingParams

log = logging.getLogger("golong.cluster")


class InlineCluster:
    """Every role in this process. With `cluster.share_weights` the engine samples from the
    learner's own model object, so there is nothing to copy after an update."""

    def __init__(self, recipe: Recipe, rewards: RewardPool | None = None):
        self.rewards = rewards or RewardPool(
            recipe.reward.workers, recipe.reward.timeout_s, recipe.reward.variant, mode="process"
        )
        self.rewards.start()  # fork the reward workers before the model and its threads exist
        set_threads(recipe.cluster.torch_threads)
        self.recipe = recipe
        self.learner = build_learner(recipe)
        self.tokenizer = self.learner.tokenizer
        from golong.rollout import engine_config

        # vLLM holds its own copy of the weights: it is synced after every update
        self.shared = recipe.cluster.share_weights and engine_config(recipe).resolved != "vllm"
        if self.shared:
            model = self.learner.model
            if recipe.model.lora is not None:  # LoRA layers live inside the base model
                model = model.get_base_model()
            self.engine = build_engine(recipe, model, self.tokenizer)
        else:
            self.engine = build_engine(recipe, device=str(self.learner.device))

    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[Completion]]:
        model = getattr(self.engine, "model", None)
        was_training = bool(model is not None and model.training)
        self.engine.wake()
        try:
            if self.shared and self.recipe.model.compile and not getattr(self.engine, "runs_own_layers", False):
                import torch  # an engine calling the learner's compiled layers runs them eagerly

                with torch.compiler.set_stance("force_eager"):
                    return self.engine.generate(prompts, n, params)
            return self.engine.generate(prompts, n, params)
        finally:
            if was_training:  # the shared model goes back to the learner as it was
                model.train()
            if self.recipe.cluster.colocate and not self.shared:
                self.engine.sleep()
            elif self.recipe.cluster.colocate and hasattr(self.engine, "free_cache"):
                self.engine.free_cache()  # the shared model stays; its K/V storage goes while the learner trains

    def engine_stats(self) -> dict[str, float]:
        return engine_stats(self.engine)

    def train_step(self, samples: list) -> dict[str, float]:
        return self.learner.train_step(samples)

    def sync_weights(self) -> None:
        if not self.shared:
            self.engine.load_weights(self.learner.state_dict_for_sync())

    def save_learner(self, path: Path) -> None:
        self.learner.save(path)

    def load_learner(self, path: Path) -> None:
        self.learner.load(path)

    def shutdown(self) -> None:
        self.rewards.close()


@contextlib.contextmanager
def _sigterm_blocked():
    """Block SIGTERM while the local Ray cluster starts, so its processes (GCS, raylet, the actors) inherit
    it blocked, as Ray itself does for SIGINT. SIGTERM to the whole process group (`timeout`, `kill -- -PGID`;
    Slurm's too, until its KillWait SIGKILL) then reaches only the driver, which finishes the step and saves through the still-running actors;
    `ray.shutdown()` then kills the blocked processes after its grace period, and an abrupt driver death still
    takes them along (Ray's parent-death signal)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class RayCluster:
    """Learner and rollout as Ray actors in a placement group; rewards as Ray tasks."""

    def __init__(self, recipe: Recipe, rewards: RewardPool | None = None):
        try:
            import ray
        except ImportError:
            raise RecipeError("cluster.mode=ray needs ray: pip install 'ray[default]' (or use cluster.mode=inline)") from None
        from ray.util.placement_group import placement_group

        c = recipe.cluster
        self.recipe, self.ray = recipe, ray
        if not ray.is_initialized():
            if c.address is None:
                # A local cluster: token auth off (Ray 2.60 default on), and logical CPUs for every role.
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                # Ray starts workers at nice 15; here they *are* the job, so they keep normal priority.
                os.environ.setdefault("RAY_worker_niceness", "0")
                cpus = c.num_cpus or (c.learner_cpus * learner_ranks(c) + c.rollout_cpus + recipe.reward.workers)
                with _sigterm_blocked():
                    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)
            else:
                ray.init(address=c.address, include_dashboard=False)
        self._colocated_gpu = c.colocate and c.learner_gpus > 0
        ranks = learner_ranks(c)  # one bundle per learner rank (1 GPU each); the rollout bundle last
        per_rank = {"CPU": c.learner_cpus, "GPU": 1 if c.learner_gpus else 0}
        if self._colocated_gpu:  # the engine shares rank 0's GPU (and bundle)
            bundles = [{**per_rank, "CPU": c.learner_cpus + c.rollout_cpus}] + [per_rank] * (ranks - 1)
        else:
            bundles = [per_rank] * ranks + [{"CPU": c.rollout_cpus, "GPU": c.rollout_gpus}]
        self._rollout_bundle = 0 if self._colocated_gpu else ranks
        bundles = [{k: v for k, v in b.items() if v} for b in bundles]
        self.pg = placement_group(bundles, strategy="PACK")
        ready, _ = ray.wait([self.pg.ready()], timeout=120)
        if not ready:
            raise RecipeError(f"Ray cannot place the roles {bundles} on this cluster (not enough CPUs/GPUs); "
                              "lower cluster.learner_cpus / rollout_cpus or add nodes")
        # rank r on bundle r; with one rank it is a plain Learner (no process group)
        rank_gpus = (0.5 if self._colocated_gpu else 1) if c.learner_gpus else 0
        self.learner = LearnerGroup(recipe, self.pg, list(range(ranks)), cpus=c.learner_cpus, gpus=rank_gpus)
        self.tokenizer = _load_tokenizer(recipe)
        self.engine = self._new_engine()
        self.rewards = rewards or RewardPool(
            recipe.reward.workers, recipe.reward.timeout_s, recipe.reward.variant, mode="ray"
        )
        self.restarts = 0

    def _actor(self, cls: type, bundle: int, cpus: float, gpus: float):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=bundle)
        return self.ray.remote(cls).options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy=strategy).remote(self.recipe)

    def _new_engine(self):
        c = self.recipe.cluster
        if self._colocated_gpu:
            return self._actor(RolloutActor, 0, c.rollout_cpus, 0.5)
        return self._actor(RolloutActor, self._rollout_bundle, c.rollout_cpus, c.rollout_gpus)

    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[Completion]]:
        from ray.exceptions import RayActorError

        try:
            return self.ray.get(self.engine.generate.remote(prompts, n, params))
        except RayActorError as e:
            self.restarts += 1
            log.warning("rollout actor died (%s); restarting it and retrying the generation", str(e).splitlines()[0][:200])
            print(f"[golong] rollout actor died; restarted it (restart #{self.restarts}) and retrying the step's generation")
            self.ray.kill(self.engine, no_restart=True)
            self.engine = self._new_engine()
            self.sync_weights()
            return self.ray.get(self.engine.generate.remote(prompts, n, params))

    def engine_stats(self) -> dict[str, float]:
        return self.ray.get(self.engine.stats.remote())

    def train_step(self, samples: list) -> dict[str, float]:
        return self.learner.train_step(samples)

    def sync_weights(self) -> None:
        # The state dict goes learner rank 0 -> object store -> engine; the driver only passes the
        # reference. The other ranks take part in the gather and return nothing.
        full, others = self.learner.state_dict_for_sync()
        self.ray.get(self.engine.load_weights.remote(full))
        self.ray.get(others)

    def save_learner(self, path: Path) -> None:
        self.learner.save(str(path))

    def load_learner(self, path: Path) -> None:
        self.learner.load(str(path))

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        self.rewards.close()
        self.ray.kill(self.engine, no_restart=True)
        self.learner.kill()
        remove_placement_group(self.pg)


def _load_tokenizer(recipe: Recipe):
    from transformers import AutoTokenizer

    from golong.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(recipe.model.path), trust_remote_code=recipe.model.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def make_cluster(recipe: Recipe, rewards: RewardPool | None = None) -> InlineCluster | RayCluster:
    from golong.models import preflight
    from golong.rollout import check_available

    check_available(recipe.rollout.engine)  # say so before any cluster or model is started
    preflight(recipe.model)  # a missing folder or an unreachable hub id: one line here, not a remote traceback
    return (RayCluster if recipe.cluster.mode == "ray" else InlineCluster)(recipe, rewards)
