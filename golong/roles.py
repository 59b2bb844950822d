"""The roles that hold a model, built from a recipe: the learner and the rollout engine, in this
process (`build_learner`, `build_engine`) or each in a Ray actor (`RolloutActor`; `LearnerRank` per
learner rank, driven as one learner by `LearnerGroup`).

golong.cluster decides where they run (in process or placed on a Ray cluster); this module is what
runs there. Ray itself is imported only inside `LearnerGroup`, so the builders work without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from golong.config import Recipe
from golong.distributed import init_learner_group
from golong.rollout.base import Completion, SamplingParams


def set_threads(n: int | None) -> None:
    """torch's CPU threads for a role (None: every core; learner and rollout take turns)."""
    torch.set_num_threads(n or os.cpu_count() or 1)


def _engine_model_cfg(recipe: Recipe):
    # The engine needs plain full weights: LoRA arrives merged through state_dict_for_sync, and
    # gradient checkpointing would switch its KV cache off.
    return recipe.model.model_copy(update={"lora": None, "gradient_checkpointing": False})


def build_learner(recipe: Recipe, device: str | None = None):
    from golong.learner import Learner

    return Learner(
        recipe.model, recipe.optim, recipe.algo,
        seed=recipe.trainer.seed, device=device, temperature=recipe.rollout.temperature or 1.0,
    )


def build_engine(recipe: Recipe, model: Any = None, tokenizer: Any = None, device: str | None = None):
    from golong.rollout import engine_config, make_engine

    config = engine_config(recipe, device)
    if config.resolved == "vllm":  # vLLM loads the weights itself
        from golong.models import resolve_model_path

        return make_engine(config, resolve_model_path(recipe.model.path), tokenizer)
    if model is None:
        from golong.models import load_policy

        model, tokenizer = load_policy(_engine_model_cfg(recipe), device=device)
    return make_engine(config, model, tokenizer)


def engine_stats(engine: Any) -> dict[str, float]:
    """An engine's stats of its last generate call; {} for an engine that keeps none (vLLM)."""
    return dict(getattr(engine, "stats", None) or {})


class RolloutActor:
    """A rollout engine inside a Ray actor."""

    def __init__(self, recipe: Recipe):
        set_threads(recipe.cluster.torch_threads)
        self.colocate = recipe.cluster.colocate
        self.engine = build_engine(recipe, device="cuda" if recipe.cluster.learner_gpus or recipe.cluster.rollout_gpus else None)

    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[Completion]]:
        self.engine.wake()
        try:
            return self.engine.generate(prompts, n, params)
        finally:
            if self.colocate:
                self.engine.sleep()

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        self.engine.load_weights(state_dict)

    def stats(self) -> dict[str, float]:
        return engine_stats(self.engine)

    def pid(self) -> int:
        return os.getpid()


# ---------------------------------------------------------------- one actor per learner rank


def free_address() -> tuple[str, int]:
    """This node's IP (as Ray sees it, else the loopback) and a TCP port free right now."""
    import socket

    try:
        import ray

        host = ray.util.get_node_ip_address()
    except Exception:  # not inside Ray
        host = "127.0.0.1"
    with socket.socket() as sock:
        sock.bind(("", 0))
        return host, sock.getsockname()[1]


def learner_ranks(cluster: Any) -> int:
    """How many learner ranks a recipe's `cluster` section asks for: one per GPU, else learner_procs."""
    return cluster.learner_gpus if cluster.learner_gpus > 0 else cluster.learner_procs


class LearnerRank:
    """One learner rank inside a Ray actor (one GPU each: Ray sets CUDA_VISIBLE_DEVICES, so LOCAL_RANK is 0).

    `setup` joins the process group and builds the Learner; every other call is the Learner's, and the
    collective ones (train_step, state_dict_for_sync, save, load) must be called on all ranks together.
    """

    def address(self) -> tuple[str, int]:
        return free_address()

    def setup(self, recipe: Any, rank: int, world: int, master: tuple[str, int]) -> int:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR=master[0], MASTER_PORT=str(master[1]))
        set_threads(recipe.cluster.torch_threads)
        self.ctx = init_learner_group()
        self.learner = build_learner(recipe)
        return os.getpid()

    def train_step(self, samples: list) -> dict[str, float]:
        return self.learner.train_step(samples)

    def state_dict_for_sync(self) -> dict[str, torch.Tensor]:
        # rank 0: the full weights (CPU); the other ranks: {} (one rank: its plain Learner's, moved to CPU)
        return {k: v.cpu() for k, v in self.learner.state_dict_for_sync().items()}

    def save(self, path: str) -> None:
        self.learner.save(path)

    def load(self, path: str) -> None:
        self.learner.load(path)

    def pid(self) -> int:
        return os.getpid()


class LearnerGroup:
    """N `LearnerRank` actors placed on bundles of a placement group, driven as one learner.

    The same calls as a single learner actor, but each returns rank 0's answer after all ranks finished;
    `state_dict_for_sync()` returns (rank 0's object ref, the others' refs to wait on after use).
    """

    def __init__(self, recipe: Any, placement_group: Any, bundles: Sequence[int], *, cpus: float, gpus: float) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.ray = ray
        self.actors = [
            ray.remote(LearnerRank).options(
                num_cpus=cpus, num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group, placement_group_bundle_index=b),
            ).remote()
            for b in bundles
        ]
        master = ray.get(self.actors[0].address.remote())
        world = len(self.actors)
        ray.get([a.setup.remote(recipe, r, world, master) for r, a in enumerate(self.actors)])

    def _all(self, method: str, *args: Any) -> list[Any]:
        return self.ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def train_step(self, samples: list) -> dict[str, float]:
        ref = self.ray.put(samples)  # stored once, read by every rank
        return self._all("train_step", ref)[0]

    def state_dict_for_sync(self) -> tuple[Any, list[Any]]:
        refs = [a.state_dict_for_sync.remote() for a in self.actors]
        return refs[0], refs[1:]

    def save(self, path: str) -> None:
        self._all("save", path)

    def load(self, path: str) -> None:
        self._all("load", path)

    def kill(self) -> None:
        for a in self.actors:
            self.ray.kill(a, no_restart=True)
