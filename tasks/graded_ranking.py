"""Graded ranking (NDCG): rank the items a question selects by a quantity stated in the document.

Document: rainfall reports of many weather stations, regions and months. Question: rank one
region's stations by their rainfall in one month. Gold: station names from most to least rain
(graded relevance by rank); the reward is NDCG@|gold| over the `[Answer]` lines.
Knobs: `items` — stations to rank; `near_misses` — share of filler lines that report the same
stations in other months.
"""

from __future__ import annotations

import random

from tasks import textgen as tg
from tasks.base import ANSWER_LINES, Problem, Task, TaskError


class GradedRanking(Task):
    name = "graded_ranking"
    capability = "graded ranking"
    data_source = "longbench_pro"
    reward_mode = "T1.2 Key-Snippet Retrieval"
    instruction = ANSWER_LINES.format(what="the station names from the most to the least rain")
    knobs = {"items": 6, "near_misses": 0.3}

    def build(self, rng: random.Random, split: str, items: int = 6, near_misses: float = 0.3) -> Problem:
        if items < 2:
            raise TaskError("graded_ranking: items must be >= 2")
        region = tg.name(rng, split)
        month = tg.month(rng)
        stations = tg.unique(lambda seen: tg.name(rng, split, exclude=seen | {region}), items)
        rain = rng.sample(range(5, 600), items)
        essentials = [
            f"Station {s} in region {region} recorded {v} mm of rain in {month}." for s, v in zip(stations, rain, strict=True)
        ]
        ranked = [s for _, s in sorted(zip(rain, stations, strict=True), reverse=True)]
        other_months = [m for m in tg.MONTHS if m != month]
        banned = set(stations) | {region}

        def filler(r: random.Random) -> str:
            u = r.random()
            if u < near_misses:
                return (
                    f"Station {r.choice(stations)} in region {region} recorded {r.randint(5, 600)} mm of rain "
                    f"in {r.choice(other_months)}."
                )
            if u < 0.92:
                s, g = tg.name(r, split, exclude=banned), tg.name(r, split, exclude=banned)
                return f"Station {s} in region {g} recorded {r.randint(5, 600)} mm of rain in {tg.month(r)}."
            return tg.noise(r)

        return Problem(
            question=f"Rank the stations of region {region} by the rain they recorded in {month}, from most to least.",
            essentials=essentials,
            filler=filler,
            doc_ids=ranked,
            golden_label="\n".join(ranked),
            context="Below are monthly rainfall reports of weather stations.",
        )


TASK = GradedRanking
