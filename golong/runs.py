"""Run folders: which run a folder holds, and the recipe a resumed run continues with.

A run folder holds `run.json` (the run's id, when it started, each start and resume with its
overrides), `recipe.yaml` (the run's recipe as it now stands), `metrics.jsonl` and `checkpoints/`.

- A new run claims an empty (or missing) folder; a folder that already holds a run that trained
  something (a checkpoint or a logged step) is refused with one line, unless `--overwrite` clears it.
  So a run never writes over another run's metrics or recipe. A folder is held by one process at a
  time (`lock`).
- `--resume RUN` continues the run recorded in RUN: its `recipe.yaml`, with any command-line
  overrides applied on top and recorded (in `recipe.yaml` and in `run.json`'s history).
- Every checkpoint stores the run id; a checkpoint from another run is refused on resume.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from golong.config import Recipe, RecipeError, load_recipe

RUN_FILE = "run.json"
RECIPE_FILE = "recipe.yaml"
# what marks a folder as holding a run (folders from before run.json have the others)
_RUN_MARKS = (RUN_FILE, RECIPE_FILE, "metrics.jsonl", "checkpoints")


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in _RUN_MARKS)


def has_progress(folder: Path) -> bool:
    """Did the run in `folder` train anything (a checkpoint, or a step in metrics.jsonl)?"""
    metrics = folder / "metrics.jsonl"
    return (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir()) or \
        (metrics.is_file() and metrics.stat().st_size > 0)


def lock(folder: str | Path):
    """Hold the run folder for this process (released when the returned file is closed or the
    process ends); a folder another golong process is training in is refused. (Within one process
    the lock does not guard: trainers built one after another in a process share it.)"""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a+")  # noqa: SIM115 (held open for the run's lifetime)
    try:
        # a POSIX record lock belongs to this process: forked workers (reward pool) do not inherit it
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RecipeError(f"{folder} is in use by another golong process; wait for it to end, or choose another "
                          "folder with trainer.output_dir=...") from None
    return handle


def read_run(folder: Path) -> dict[str, Any]:
    try:
        info = json.loads((folder / RUN_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise RecipeError(f"{folder / RUN_FILE} is unreadable ({type(e).__name__}); is {folder} a golong run folder?") from None
    if not isinstance(info, dict) or not isinstance(info.get("run_id"), str):
        raise RecipeError(f"{folder / RUN_FILE} has no run_id; is {folder} a golong run folder?")
    return info


def _write_run(folder: Path, info: dict[str, Any]) -> None:
    tmp = folder / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(folder / RUN_FILE)


def _event(action: str, overrides: list[str] | None) -> dict[str, Any]:
    return {"action": action, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "overrides": list(overrides or [])}


def claim_new(folder: str | Path, overrides: list[str] | None = None, overwrite: bool = False) -> str:
    """Make `folder` the home of a new run and return its id; a folder holding a run is refused."""
    folder = Path(folder)
    if holds_run(folder):
        if has_progress(folder) and not overwrite:
            raise RecipeError(
                f"{folder} already holds a run: continue it with `golong train --resume {folder}`, choose another "
                f"folder with trainer.output_dir=..., or start over with --overwrite (deletes its checkpoints and metrics)")
        # overwrite, or a run that never trained a step (stopped in start-up, a recipe error): nothing to lose
        for name in _RUN_MARKS:
            target = folder / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:16]
    _write_run(folder, {"run_id": run_id, "history": [_event("start", overrides)]})
    return run_id


def record_resume(folder: str | Path, overrides: list[str] | None) -> str:
    """Note a resume (and its overrides) in run.json; a folder from before run.json gets one. Returns the id."""
    folder = Path(folder)
    info = read_run(folder) or {"run_id": uuid.uuid4().hex[:16], "history": []}
    info.setdefault("history", []).append(_event("resume", overrides))
    _write_run(folder, info)
    return info["run_id"]


def write_recipe(folder: str | Path, recipe: Recipe) -> None:
    folder = Path(folder)
    tmp = folder / f".{RECIPE_FILE}.tmp"
    tmp.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    tmp.replace(folder / RECIPE_FILE)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def resume_recipe(run: str | Path, overrides: list[str] | None = None,
                  recipe_file: str | None = None) -> tuple[Recipe, list[str]]:
    """The recipe `--resume RUN` continues with: RUN's recorded recipe + overrides.

    trainer.output_dir is RUN (it cannot be overridden). A recipe file given as well is not used;
    the keys where it differs from the recorded recipe are returned so the caller can say so.
    """
    run = Path(run)
    if not (run / RECIPE_FILE).is_file():
        what = "no such folder" if not run.is_dir() else f"no {RECIPE_FILE} in it (not a golong run folder?)"
        raise RecipeError(f"--resume {run}: {what}")
    kept = []
    for item in overrides or []:
        key, _, value = item.partition("=")
        if key.strip() != "trainer.output_dir":
            kept.append(item)
        elif Path(str(yaml.safe_load(value))).resolve() != run.resolve():
            raise RecipeError(f"--resume {run}: trainer.output_dir cannot change on resume (the run lives in {run})")
    recipe = load_recipe(run / RECIPE_FILE, [*kept, f"trainer.output_dir={json.dumps(str(run))}"])
    ignored: list[str] = []
    if recipe_file is not None:
        given = _flat(load_recipe(recipe_file, overrides).model_dump(mode="json"))
        recorded = _flat(recipe.model_dump(mode="json"))
        ignored = sorted(k for k in given.keys() | recorded.keys()
                         if k != "trainer.output_dir" and given.get(k) != recorded.get(k))
    return recipe, ignored


def note_tasks(folder: str | Path, sources: list[list[dict[str, Any]]]) -> dict[str, str]:
    """Record in run.json which tasks stand behind each reward type the run's metrics are keyed by
    (metrics say `reward/EM`; eval, plots and summaries name the task: `precise_retrieval`)."""
    import rewards
    from tasks import task_for_row

    names: dict[str, set[str]] = {}
    for rows in sources:
        for row in rows:
            try:
                names.setdefault(rewards.row_reward_type(row), set()).add(task_for_row(row).name)
            except Exception:  # rows that route nowhere were refused or skipped at load time
                continue
    labels = {kind: ", ".join(sorted(found)) for kind, found in sorted(names.items())}
    folder = Path(folder)
    info = read_run(folder)
    if info:
        info["tasks"] = labels
        _write_run(folder, info)
    return labels


def task_labels(folder: str | Path) -> dict[str, str]:
    """{reward type: task name(s)} of a run; for runs from before run.json, the built-in tasks' names."""
    try:
        recorded = read_run(Path(folder)).get("tasks")
    except RecipeError:
        recorded = None
    if isinstance(recorded, dict) and recorded:
        return {str(k): str(v) for k, v in recorded.items()}
    import tasks

    names: dict[str, list[str]] = {}
    for t in tasks.all_tasks():
        names.setdefault(t.reward_type, []).append(t.name)
    return {kind: ", ".join(sorted(found)) for kind, found in names.items()}
