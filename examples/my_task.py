"""An example plug-in task: find every meeting a person attended (F1 over `[Answer]` lines).

Use it with
    golong tasks list --task-file examples/my_task.py:MeetingAttendance
    golong data synth --task-file examples/my_task.py:MeetingAttendance --length 4k -n 20 -o data/meetings.jsonl
or in a recipe: `data.sources: [{task_file: examples/my_task.py:MeetingAttendance, n: 200, length: 8k}]`.
"""

from __future__ import annotations

import random

from tasks import Problem, Task
from tasks import textgen as tg
from tasks.base import ANSWER_LINES


class MeetingAttendance(Task):
    name = "meeting_attendance"
    capability = "exhaustive retrieval"
    data_source = "longbench_pro"  # the route: it selects the reward (here F1; `reward_type` says so)
    reward_mode = "T6.2 Targeted Subset Cluster Identification"
    instruction = ANSWER_LINES.format(what="the meeting IDs")
    knobs = {"needles": 4}  # difficulty knobs and their defaults: generate(..., needles=8)

    def build(self, rng: random.Random, split: str, needles: int = 4) -> Problem:
        person = tg.person(rng, split)  # names come from the split's own pool: train/heldout disjoint
        used: set[str] = set()

        def meeting_id(r: random.Random) -> str:
            m = tg.code(r, "MTG", 5)
            while m in used:
                m = tg.code(r, "MTG", 5)
            used.add(m)
            return m

        gold = [meeting_id(rng) for _ in range(needles)]

        def filler(r: random.Random) -> str:  # a line that never involves `person`
            other = tg.person(r, split, exclude={person})
            return f"Meeting {meeting_id(r)} on {tg.fmt_date(tg.date(r))} was attended by {other}."

        return Problem(
            question=f"List the IDs of every meeting that {person} attended.",
            essentials=[f"Meeting {m} on {tg.fmt_date(tg.date(rng))} was attended by {person}." for m in gold],
            filler=filler,
            doc_ids=gold,
            golden_label="\n".join(gold),
            context="Below are the attendance records of a company's meetings.",
        )
