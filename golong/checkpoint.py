"""Run-level checkpoints: everything a resumed run needs to continue exactly where it stopped.

Layout: `RUN_DIR/checkpoints/step_000010/` holding `learner/` (what `Learner.save` writes: weights,
optimizer, scheduler) and `state.pt` (step, data-mixture position, RNG states, metrics so far).
A checkpoint is written into a hidden temporary folder and renamed into place, so a crash mid-save
leaves the previous checkpoints intact and never a half-written one under a real name.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from golong.config import RecipeError

_NAME = re.compile(r"^step_(\d+)$")


def rng_state() -> dict[str, Any]:
    import numpy as np

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save(run_dir: str | Path, step: int, save_learner: Callable[[Path], Any], state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically (tmp folder + rename) and keep only the newest `keep`."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".step_{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_learner(tmp / "learner")
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / "state.pt").is_file()]
    return [p for _, p in sorted(found)]


def latest(run_dir: str | Path) -> Path:
    """The newest checkpoint of `run_dir`; a RecipeError naming the problem if there is none."""
    if not Path(run_dir).is_dir():
        raise RecipeError(f"--resume {run_dir}: no such run folder")
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise RecipeError(f"--resume {run_dir}: no checkpoint in {Path(run_dir) / 'checkpoints'} (nothing to resume)")
    return ckpts[-1]


def load_state(ckpt: str | Path) -> dict[str, Any]:
    """The driver state of a checkpoint (the learner part is restored by `Learner.load(ckpt/'learner')`)."""
    return torch.load(Path(ckpt) / "state.pt", weights_only=False)
