"""Numerical reasoning (math_verify): aggregate numbers scattered through a long ledger.

Document: invoices of many clients and categories. Question: the total (or the spread, largest
minus smallest) of one client's invoices in one category. Gold: the number; the reward parses
`\\boxed{}` near the end of the response and verifies it against the gold.
Knobs: `needles` — number of matching invoices; `op` — "sum" or "range"; `near_misses` — share of
filler invoices for the same client in another category or another client in the same category.
"""

from __future__ import annotations

import random

from tasks import textgen as tg
from tasks.base import THINK, Problem, Task, TaskError

CATEGORIES = "freight catering repairs consulting printing cleaning security licensing".split()


class NumericalReasoning(Task):
    name = "numerical_reasoning"
    capability = "numerical reasoning"
    data_source = "math_longcot_math_verify"
    reward_mode = "math_longcot_math_verify"
    instruction = THINK + " After it, give the final number inside \\boxed{}, for example \\boxed{42}."
    knobs = {"needles": 5, "op": "sum", "near_misses": 0.4}

    def build(self, rng: random.Random, split: str, needles: int = 5, op: str = "sum", near_misses: float = 0.4) -> Problem:
        if op not in ("sum", "range"):
            raise TaskError(f"numerical_reasoning: op must be 'sum' or 'range', got {op!r}")
        if needles < 1 or (op == "range" and needles < 2):
            raise TaskError("numerical_reasoning: needles must be >= 1 (>= 2 for op='range')")
        client = tg.name(rng, split)
        category = rng.choice(CATEGORIES)
        used: set[str] = set()

        def invoice(r: random.Random, who: str, cat: str, amount: int) -> str:
            c = tg.code(r, "INV", 6)
            while c in used:
                c = tg.code(r, "INV", 6)
            used.add(c)
            return f"Invoice {c}: client {who}, category {cat}, amount {amount} credits."

        amounts = [rng.randint(10, 2000) for _ in range(needles)]
        essentials = [invoice(rng, client, category, a) for a in amounts]
        value = sum(amounts) if op == "sum" else max(amounts) - min(amounts)

        def filler(r: random.Random) -> str:
            u = r.random()
            if u < near_misses / 2:
                return invoice(r, client, r.choice([c for c in CATEGORIES if c != category]), r.randint(10, 2000))
            if u < near_misses:
                return invoice(r, tg.name(r, split, exclude={client}), category, r.randint(10, 2000))
            if u < 0.92:
                return invoice(r, tg.name(r, split, exclude={client}), r.choice(CATEGORIES), r.randint(10, 2000))
            return tg.noise(r)

        if op == "sum":
            q = f"What is the total amount, in credits, of all invoices to client {client} in the category {category}?"
        else:
            q = (
                f"Among the invoices to client {client} in the category {category}, what is the difference "
                "in credits between the largest and the smallest amount?"
            )
        return Problem(
            question=q,
            essentials=essentials,
            filler=filler,
            doc_ids=[str(value)],
            golden_label=str(value),
            context="Below is an accounting ledger of invoices.",
        )


TASK = NumericalReasoning
