"""Sequence ordering (Pairwise): rebuild a timeline from dated events scattered through the text.

Document: milestone reports of many projects, in random order, with dates written in mixed
formats. Question: order one project's milestones from earliest to latest. Gold: milestone IDs in
chronological order; the reward is the share of correctly ordered pairs among the `[Answer]` lines.
Knobs: `items` — milestones to order; `mixed_dates` — vary the date format.
"""

from __future__ import annotations

import random

from tasks import textgen as tg
from tasks.base import ANSWER_LINES, Problem, Task, TaskError

STEPS = (
    "design review passed|prototype built|first customer trial|safety audit|budget approved|"
    "supplier contract signed|field test finished|public launch|team doubled|pilot plant opened"
).split("|")


class SequenceOrdering(Task):
    name = "sequence_ordering"
    capability = "sequence ordering"
    data_source = "longbench_pro"
    reward_mode = "T2.1 Global Timeline Reconstruction"
    instruction = ANSWER_LINES.format(what="the milestone IDs from the earliest to the latest")
    knobs = {"items": 6, "mixed_dates": True}

    def build(self, rng: random.Random, split: str, items: int = 6, mixed_dates: bool = True) -> Problem:
        if items < 2:
            raise TaskError("sequence_ordering: items must be >= 2")
        project = tg.name(rng, split)
        used: set[str] = set()

        def new_id(r: random.Random) -> str:
            c = tg.code(r, "M", 5)
            while c in used:
                c = tg.code(r, "M", 5)
            used.add(c)
            return c

        def style(r: random.Random) -> int:
            return r.randrange(3) if mixed_dates else 0

        dates: set = set()
        while len(dates) < items:
            dates.add(tg.date(rng))
        events = [(d, new_id(rng), rng.choice(STEPS)) for d in sorted(dates)]
        rng.shuffle(events)
        essentials = [f"{tg.fmt_date(d, style(rng))}: project {project} reached milestone {m} ({s})." for d, m, s in events]
        ordered_ids = [m for _, m, _ in sorted(events)]

        def filler(r: random.Random) -> str:
            if r.random() < 0.9:
                other = tg.name(r, split, exclude={project})
                return f"{tg.fmt_date(tg.date(r), style(r))}: project {other} reached milestone {new_id(r)} ({r.choice(STEPS)})."
            return tg.noise(r)

        return Problem(
            question=f"Order the milestones of project {project} from the earliest to the latest.",
            essentials=essentials,
            filler=filler,
            doc_ids=ordered_ids,
            golden_label="\n".join(ordered_ids),
            context="Below are milestone reports of many projects, not in chronological order.",
        )


TASK = SequenceOrdering
