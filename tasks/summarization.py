"""Summarization (ROUGE-L): summarise the events of one entity from a long operations log.

Document: an operations log of many clusters: outages and routine checks. Question: summarise one
cluster's outages, one templated sentence per outage in date order. Gold: that summary, built from
the same facts as the log lines, so a faithful summary reproduces it; the reward is ROUGE-L F.
Knobs: `incidents` — outages to summarise; `near_misses` — share of filler lines that are routine
checks of the same cluster (not outages).
"""

from __future__ import annotations

import random

from tasks import textgen as tg
from tasks.base import THINK, Problem, Task, TaskError

SERVICES = "billing search checkout login storage messaging analytics payments".split()
CAUSES = (
    "a failed disk|an expired certificate|a memory leak|a network partition|a bad configuration push|"
    "a power cut|a database lock|an overloaded queue"
).split("|")


class Summarization(Task):
    name = "summarization"
    capability = "summarization"
    data_source = "longbench_pro"
    reward_mode = "T4.2 Query-Focused Summary"
    instruction = THINK + " After it, write only the summary."
    # The released ROUGE-L scores the whole response and counts distinct words, so the think tags
    # cost a perfect answer 1/(2m+1) for a reference of m distinct words; the default summary has
    # m >= 50 (one overview sentence, five outages with engineer and ticket), keeping it >= 0.99.
    knobs = {"incidents": 5, "near_misses": 0.4}

    def build(self, rng: random.Random, split: str, incidents: int = 5, near_misses: float = 0.4) -> Problem:
        if incidents < 1:
            raise TaskError("summarization: incidents must be >= 1")
        cluster = tg.name(rng, split)
        dates: set = set()
        while len(dates) < incidents:
            dates.add(tg.date(rng))
        tickets: set[str] = set()

        def ticket(r: random.Random) -> str:
            t = tg.code(r, "INC", 5)
            while t in tickets:
                t = tg.code(r, "INC", 5)
            tickets.add(t)
            return t

        events = [
            (d, rng.choice(SERVICES), rng.randint(3, 240), rng.choice(CAUSES), tg.person(rng, split), ticket(rng))
            for d in sorted(dates)
        ]
        essentials = [
            f"[{d.isoformat()}] cluster {cluster}: the {s} service was down for {m} minutes; cause: {c}; "
            f"ticket {t} closed by {who}."
            for d, s, m, c, who, t in events
        ]
        rng.shuffle(essentials)
        total = sum(e[2] for e in events)
        summary = f"Cluster {cluster} had {incidents} outages, {total} minutes of downtime in total. " + " ".join(
            f"On {d.isoformat()}, the {s} service was down for {m} minutes because of {c}; {who} closed ticket {t}."
            for d, s, m, c, who, t in events
        )

        def filler(r: random.Random) -> str:
            u = r.random()
            d = tg.date(r).isoformat()
            if u < near_misses:
                return f"[{d}] cluster {cluster}: routine check of the {r.choice(SERVICES)} service passed."
            if u < 0.92:
                other = tg.name(r, split, exclude={cluster})
                return (
                    f"[{d}] cluster {other}: the {r.choice(SERVICES)} service was down for {r.randint(3, 240)} "
                    f"minutes; cause: {r.choice(CAUSES)}; ticket {ticket(r)} closed by {tg.person(r, split)}."
                )
            return tg.noise(r)

        return Problem(
            question=(
                f"Summarize the outages of cluster {cluster}. First write: Cluster <name> had <count> outages, "
                "<total minutes> minutes of downtime in total. Then write one sentence per outage, in date order, "
                "in this form: On <date>, the <service> service was down for <minutes> minutes because of "
                "<cause>; <engineer> closed ticket <ticket>."
            ),
            essentials=essentials,
            filler=filler,
            doc_ids=[summary],
            golden_label=summary,
            context="Below is the operations log of a data centre.",
        )


TASK = Summarization
