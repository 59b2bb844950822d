"""The task registry: built-in tasks, plug-ins, and resolving a data row to its task.

Plug-ins come from two places only, both named by the user:
- a file spec `path/to/file.py:ClassName` (`load_task_spec`), e.g. from a recipe or `--task-file`;
- the `golong.tasks` entry-point group of installed packages (each entry point names a Task subclass).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import warnings
from importlib import metadata
from pathlib import Path

from tasks.base import Task, TaskError

BUILTIN_MODULES = (
    "tasks.precise_retrieval",
    "tasks.comprehension",
    "tasks.exhaustive_retrieval",
    "tasks.numerical_reasoning",
    "tasks.multi_table",
    "tasks.structured_matching",
    "tasks.graded_ranking",
    "tasks.sequence_ordering",
    "tasks.summarization",
)
ENTRY_POINT_GROUP = "golong.tasks"

_registry: dict[str, Task] = {}
_generic: dict[str, Task] = {}
_loaded = False


class UnknownTaskError(TaskError):
    """A task name that no built-in or loaded plug-in provides."""


def _norm(s: str) -> str:
    return " ".join(str(s).lower().replace("_", " ").replace("-", " ").split())


def check_task(task: Task) -> Task:
    """Check a task's class attributes, including that its route reaches a reward (and, where a plug-in
    spells out its reward_type, that the route reaches that one)."""
    import rewards

    for attr in ("name", "capability", "data_source", "reward_mode"):
        value = getattr(task, attr, None)
        if not isinstance(value, str) or not value:
            raise TaskError(f"task {type(task).__name__} must set the class attribute {attr!r} to a non-empty string")
    try:
        routed = rewards.reward_type(task.data_source, {"reward_mode": task.reward_mode})
    except rewards.UnknownRouteError as e:
        raise TaskError(f"task {task.name!r}: data_source/reward_mode do not route to a reward ({e})") from None
    declared = task.reward_type
    if declared not in rewards.REWARD_TYPES:
        raise TaskError(
            f"task {task.name!r}: reward_type {declared!r} is not one of {', '.join(rewards.REWARD_TYPES)}"
        )
    if routed != declared:
        raise TaskError(
            f"task {task.name!r}: data_source={task.data_source!r}, reward_mode={task.reward_mode!r} "
            f"route to {routed}, not to its reward_type {declared}"
        )
    _warn_if_answer_marker_is_not_read(task)
    return task


class TaskWarning(UserWarning):
    """A task that loads but whose rows may not score as its author expects."""


def _warn_if_answer_marker_is_not_read(task: Task) -> None:
    """A task asking for `[Answer]` on a route whose reward does not look for it (EM compares the whole
    text after </think>) can never score a correct answer 1: warn. The route is probed, not listed."""
    import rewards

    if "[Answer]" not in (task.instruction or ""):
        return
    gold = {"doc_ids": ["K-9"], "golden_label": "K-9", "summary": "English"}
    info = {"reward_mode": task.reward_mode}
    plain = rewards.compute_score(task.data_source, "x</think>\nK-9", gold, info)
    marked = rewards.compute_score(task.data_source, "x</think>\n[Answer]\nK-9", gold, info)
    if plain > marked:
        warnings.warn(f"task {task.name!r} asks for an [Answer] line, but its route ({task.data_source}/"
                      f"{task.reward_mode}, {task.reward_type}) scores the whole text after </think>, so an answer "
                      "written as asked scores 0: drop [Answer] from the instruction or use a route that reads it",
                      TaskWarning, stacklevel=3)


def register(task: Task | type[Task], source: str | None = None) -> Task:
    """Add a task (class or instance) to the registry and return the instance.

    A plug-in may not take a built-in task's name; loading the same plug-in again replaces it.
    """
    if isinstance(task, type):
        if not issubclass(task, Task):
            raise TaskError(f"{task.__name__} is not a subclass of tasks.Task")
        task = task()
    if not isinstance(task, Task):
        raise TaskError(f"{task!r} is not a tasks.Task")
    if source is not None:
        task.source = source  # type: ignore[misc]  # per-instance origin of a plug-in
    check_task(task)
    old = _registry.get(task.name)
    if old is not None and old.source == "built-in" and task.source != "built-in":
        raise TaskError(f"plug-in task {task.name!r} clashes with the built-in task of that name: rename it")
    _registry[task.name] = task
    return task


def _load_builtins_and_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    for mod_name in BUILTIN_MODULES:
        register(importlib.import_module(mod_name).TASK)
    _loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            register(ep.load(), source=f"plug-in (entry point {ep.value})")
        except Exception as e:  # a broken third-party package must not break golong
            warnings.warn(f"{ENTRY_POINT_GROUP} entry point {ep.name!r} ({ep.value}) not loaded: {e}", stacklevel=2)


def all_tasks() -> list[Task]:
    """Every registered task: the 9 built-ins first, then plug-ins in load order."""
    _load_builtins_and_entry_points()
    return list(_registry.values())


def get_task(name: str) -> Task:
    """The task called `name` (underscores, dashes and case are interchangeable)."""
    _load_builtins_and_entry_points()
    if name in _registry:
        return _registry[name]
    for task in _registry.values():
        if _norm(task.name) == _norm(name):
            return task
    import difflib

    known = ", ".join(sorted(_registry))
    close = difflib.get_close_matches(_norm(name), {_norm(t): t for t in _registry}, n=1, cutoff=0.6)
    hint = f"did you mean {[t for t in _registry if _norm(t) == close[0]][0]!r}? " if close else ""
    raise UnknownTaskError(f"unknown task {name!r}; {hint}known tasks: {known} (plug-ins: --task-file path.py:Class)")


def load_task_spec(spec: str) -> Task:
    """Load `path/to/file.py:ClassName`, register the task and return it."""
    path_str, sep, cls_name = spec.rpartition(":")
    if not sep or not path_str or not cls_name:
        raise TaskError(f"task spec {spec!r} must look like path/to/file.py:ClassName")
    path = Path(path_str).expanduser()
    if path.suffix != ".py" or not path.is_file():
        raise TaskError(f"task spec {spec!r}: {path} is not an existing .py file")
    path = path.resolve()
    mod_name = f"golong_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    if module_spec is None or module_spec.loader is None:
        raise TaskError(f"task spec {spec!r}: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise TaskError(f"task spec {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from None
    obj = getattr(module, cls_name, None)
    if obj is None:
        raise TaskError(f"task spec {spec!r}: {path.name} defines no {cls_name!r}")
    _load_builtins_and_entry_points()
    return register(obj, source=f"plug-in ({path_str}:{cls_name})")


class GenericTask(Task):
    """Stands for rows of a reward type that no registered task generates (e.g. real GoLongRL rows).

    It scores (through the row's own route) but cannot generate.
    """

    source = "generic"
    reward_type = ""  # type: ignore[assignment]  # no route of its own: set per instance

    def __init__(self, reward_type: str) -> None:
        self.name = f"golongrl-{reward_type}"  # type: ignore[misc]
        self.reward_type = reward_type  # type: ignore[misc]
        self.capability = reward_type  # type: ignore[misc]


def task_for_row(row: dict) -> Task:
    """The task a row belongs to.

    1. `extra_info.task` naming a registered task;
    2. else a registered task whose capability equals the row's `ability` and whose reward type is
       the row's routed reward type;
    3. else a `GenericTask` for the row's reward type.
    A row whose data_source / reward_mode routes nowhere raises rewards.UnknownRouteError (a row that is
    not in the schema at all, another `ValueError` of `rewards`).
    """
    import rewards

    _load_builtins_and_entry_points()
    info = row.get("extra_info") or {}
    name = info.get("task") if isinstance(info, dict) else None
    if isinstance(name, str) and name in _registry:
        return _registry[name]
    rtype = rewards.row_reward_type(row)
    ability = _norm(row.get("ability") or "")
    for task in _registry.values():
        if task.reward_type == rtype and _norm(task.capability) == ability:
            return task
    if rtype not in _generic:
        _generic[rtype] = GenericTask(rtype)
    return _generic[rtype]
