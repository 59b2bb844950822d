"""The GoLongRL capabilities as tasks: offline generators of verifiable long-context problems.

Each of the 9 built-in tasks (one module each) writes rows in the GoLongRL schema at any target
length and is scored by the GoLongRL reward its route selects. New tasks: subclass `Task` in a .py
file and load it with `load_task_spec("file.py:Class")`, or expose it in the `golong.tasks`
entry-point group.
"""

from tasks.base import Problem, Task, TaskError
from tasks.registry import (
    GenericTask,
    UnknownTaskError,
    all_tasks,
    get_task,
    load_task_spec,
    register,
    task_for_row,
)

__all__ = [
    "GenericTask",
    "Problem",
    "Task",
    "TaskError",
    "UnknownTaskError",
    "all_tasks",
    "get_task",
    "load_task_spec",
    "register",
    "task_for_row",
]
