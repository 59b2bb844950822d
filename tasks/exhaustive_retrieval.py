"""Exhaustive retrieval (F1): find every record that breaks a stated rule.

Document: shipment records for many docks. Question: list all shipments from one dock that exceed
its weight limit. Gold: the violating shipment IDs (set F1 over `[Answer]` lines).
Knobs: `needles` — number of violations; `near_misses` — share of filler lines that are shipments
from the same dock at or under the limit.
"""

from __future__ import annotations

import random

from tasks import textgen as tg
from tasks.base import ANSWER_LINES, Problem, Task


class ExhaustiveRetrieval(Task):
    name = "exhaustive_retrieval"
    capability = "exhaustive retrieval"
    data_source = "longbench_pro"
    reward_mode = "T7.2 Targeted Rule or Condition Violation Detection"
    instruction = ANSWER_LINES.format(what="the shipment IDs")
    knobs = {"needles": 5, "near_misses": 0.4}

    def build(self, rng: random.Random, split: str, needles: int = 5, near_misses: float = 0.4) -> Problem:
        dock = tg.name(rng, split)
        limit = rng.randrange(400, 900, 10)
        used: set[str] = set()

        def new_id(r: random.Random) -> str:
            c = tg.code(r, "SH")
            while c in used:
                c = tg.code(r, "SH")
            used.add(c)
            return c

        ids = [new_id(rng) for _ in range(needles)]
        essentials = [f"Shipment {i} left dock {dock} carrying {limit + rng.randint(1, 300)} kg." for i in ids]

        def filler(r: random.Random) -> str:
            u = r.random()
            if u < near_misses:
                return f"Shipment {new_id(r)} left dock {dock} carrying {limit - r.randint(0, 300)} kg."
            if u < 0.9:
                other = tg.name(r, split, exclude={dock})
                return f"Shipment {new_id(r)} left dock {other} carrying {r.randint(50, 1500)} kg."
            return tg.noise(r)

        return Problem(
            question=(
                f"Rule: a shipment leaving dock {dock} may carry at most {limit} kg. "
                "List the IDs of all shipments that broke this rule."
            ),
            essentials=essentials,
            filler=filler,
            doc_ids=ids,
            golden_label="\n".join(ids),
            context="Below is a harbour log of shipments, the dock each left from and its weight.",
        )


TASK = ExhaustiveRetrieval
