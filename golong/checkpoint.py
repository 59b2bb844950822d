"""Run-level checkpoints: everything a resumed run needs to continue exactly where it stopped.

Layout: `RUN_DIR/checkpoints/step_000010/` holding `learner/` (what `Learner.save` writes: weights,
optimizer, scheduler), `state.pt` (step, data-mixture position, RNG states, metrics so far) and
`manifest.json` (sha256 and size of every other file).

Crash safety: a checkpoint is written into a hidden temporary folder, its files fsynced, the manifest
written last, and the folder renamed into place, so a crash mid-save leaves the previous checkpoints
intact and never a half-written one under a real name. On resume every file is checked against the
manifest; a checkpoint that fails (torn by a full disk, truncated or edited later) is skipped with a
warning and the newest good one is used. Files are read with `torch.load(weights_only=True)`: tensors
and plain data only, never pickled code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from golong.config import RecipeError

log = logging.getLogger("golong.checkpoint")

_NAME = re.compile(r"^step_(\d+)$")
MANIFEST = "manifest.json"


class CorruptCheckpoint(RecipeError):
    """A checkpoint whose files do not match its manifest (or that has none)."""


# -- RNG state as plain data (loadable with weights_only=True) ---------------------------------
def rng_state() -> dict[str, Any]:
    import numpy as np

    key, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"key": str(key), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


# -- integrity -----------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path) -> dict[str, Any]:
    """Fsync every file of `folder` and record {relative path: {sha256, bytes}} in manifest.json."""
    files = {}
    for p in _files(folder):
        _fsync(p)
        files[p.relative_to(folder).as_posix()] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
    manifest = {"format": 1, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync(folder / MANIFEST)
    return manifest


def verify(ckpt: str | Path) -> None:
    """Raise CorruptCheckpoint naming the first file that is missing, extra-short or altered."""
    ckpt = Path(ckpt)
    try:
        files = json.loads((ckpt / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(f"{ckpt}: no readable {MANIFEST} ({type(e).__name__})") from None
    for rel, meta in files.items():
        p = ckpt / rel
        if not p.is_file():
            raise CorruptCheckpoint(f"{ckpt}: {rel} is missing")
        if p.stat().st_size != meta["bytes"]:
            raise CorruptCheckpoint(f"{ckpt}: {rel} has {p.stat().st_size} bytes, expected {meta['bytes']} (torn write?)")
        if _sha256(p) != meta["sha256"]:
            raise CorruptCheckpoint(f"{ckpt}: {rel} fails its sha256 check (corrupted)")


# -- save / find / load --------------------------------------------------------------------------
def save(run_dir: str | Path, step: int, save_learner: Callable[[Path], Any], state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically (tmp folder + manifest + rename) and keep only the newest `keep`."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".step_{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_learner(tmp / "learner")
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
    write_manifest(tmp)
    if final.exists():  # the same step saved again (a warm start saves step 0 as it goes): swap, then delete
        old = root / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync(root)  # make the rename itself durable
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in [*root.glob(".step_*.tmp-*"), *root.glob(".step_*.old-*")]:  # left by a process killed mid-save
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run (renamed into place, not yet verified), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(run_dir: str | Path, warn: Callable[[str], Any] | None = None) -> Path:
    """The newest checkpoint of `run_dir` that passes `verify`; each one skipped is logged (and passed
    to `warn`). A RecipeError naming the problem if there is no good one."""
    if not Path(run_dir).is_dir():
        raise RecipeError(f"--resume {run_dir}: no such run folder")
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise RecipeError(f"--resume {run_dir}: no checkpoint in {Path(run_dir) / 'checkpoints'} (nothing to resume)")
    problems = []
    for ckpt in reversed(ckpts):
        try:
            verify(ckpt)
            return ckpt
        except CorruptCheckpoint as e:
            message = f"skipping checkpoint {ckpt.name}: {e}; trying an older one"
            log.warning(message)
            if warn is not None:
                warn(message)
            problems.append(str(e))
    raise CorruptCheckpoint(f"--resume {run_dir}: every checkpoint fails its integrity check ({'; '.join(problems)})")


def resume_point(run_dir: str | Path, warn: Callable[[str], Any] | None = None) -> Path | None:
    """What `--resume run_dir` continues from: the newest good checkpoint, or None (start at step 0,
    with a warning) for a run killed before its first checkpoint, recognised by the recipe.yaml the
    trainer writes at start-up. Any other folder without a checkpoint is a RecipeError (a typo)."""
    run = Path(run_dir)
    if run.is_dir() and not list_checkpoints(run) and (run / "recipe.yaml").is_file():
        message = f"{run} has no checkpoint yet (stopped before the first save): starting again from step 0"
        log.warning(message)
        if warn is not None:
            warn(message)
        return None
    return latest(run, warn)


def load_state(ckpt: str | Path) -> dict[str, Any]:
    """The driver state of a checkpoint (the learner part is restored by `Learner.load(ckpt/'learner')`)."""
    return torch.load(Path(ckpt) / "state.pt", weights_only=True)
