"""Structured matching (SubEM): track the state of a few entities through a long operation log.

Document: a bank's operation log (openings, deposits, withdrawals, transfers) over many accounts.
Question: the final balance of a few named accounts. Gold: one `name: balance` line per account;
the reward counts the gold lines present among the `[Answer]` lines.
Knobs: `items` — accounts to track; `steps` — operations on them after opening.
"""

from __future__ import annotations

import random

from tasks import textgen as tg
from tasks.base import ANSWER_LINES, Problem, Task, TaskError


def _operation(r: random.Random, accounts: list[str], balance: dict[str, int]) -> str:
    """One valid operation on `accounts`, applied to `balance` (never overdraws)."""
    a = r.choice(accounts)
    kind = r.random()
    if kind < 0.4 or balance[a] < 10:
        amount = r.randrange(5, 300, 5)
        balance[a] += amount
        return f"Deposit of {amount} coins into account {a}."
    if kind < 0.7 or len(accounts) < 2:
        amount = r.randrange(5, balance[a] + 1, 5)
        balance[a] -= amount
        return f"Withdrawal of {amount} coins from account {a}."
    b = r.choice([x for x in accounts if x != a])
    amount = r.randrange(5, balance[a] + 1, 5)
    balance[a] -= amount
    balance[b] += amount
    return f"Transfer of {amount} coins from account {a} to account {b}."


class StructuredMatching(Task):
    name = "structured_matching"
    capability = "structured matching"
    data_source = "longbench_pro"
    reward_mode = "T8.3 Long-Context Procedural State Tracking"
    instruction = ANSWER_LINES.format(what="the accounts in the form `name: balance` (for example `Tomar: 120`)")
    knobs = {"items": 3, "steps": 12}

    def build(self, rng: random.Random, split: str, items: int = 3, steps: int = 12) -> Problem:
        if items < 1 or steps < 0:
            raise TaskError("structured_matching: needs items >= 1 and steps >= 0")
        tracked = tg.unique(lambda seen: tg.name(rng, split, exclude=seen), items)
        balance = {a: rng.randrange(100, 1000, 5) for a in tracked}
        essentials = [f"Account {a} was opened with a balance of {balance[a]} coins." for a in tracked]
        essentials += [_operation(rng, tracked, balance) for _ in range(steps)]
        # untracked accounts: their own state, so filler operations are as plausible as real ones
        others: dict[str, int] = {}
        excluded = set(tracked)

        def filler(r: random.Random) -> str:
            if r.random() < 0.08:
                return tg.noise(r)
            if len(others) < 2 or r.random() < 0.05:
                a = tg.name(r, split, exclude=excluded)
                excluded.add(a)
                others[a] = r.randrange(100, 1000, 5)
                return f"Account {a} was opened with a balance of {others[a]} coins."
            return _operation(r, list(others), others)

        return Problem(
            question=f"What is the final balance of each of these accounts: {', '.join(tracked)}?",
            essentials=essentials,
            filler=filler,
            doc_ids=[f"{a}: {balance[a]}" for a in tracked],
            golden_label="\n".join(f"{a}: {balance[a]}" for a in tracked),
            context="Below is a bank's operation log, in chronological order.",
            ordered=True,
        )


TASK = StructuredMatching
