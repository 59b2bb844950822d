"""Score rows of responses: the work behind `golong rewards score` (which reads and writes the rows
with golong's data loader: parquet, JSONL, JSON or a hub id).

Input: dataset rows (GoLongRL schema), each with a `response` string. Output: the same rows with
`reward` (float) and `reward_type` (str) added. A bad row (a missing field, an unknown route, or an
exception standing in for a row the reader could not read) is reported with its number (from 1)
and skipped; the others are still scored. With `oracle=True`, a row without `response` is scored
against `oracle_response(row)`, which is also written out as its `response`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rewards.errors import RewardInputError
from rewards.oracle import oracle_response
from rewards.routing import REWARD_TYPES, Variant
from rewards.rows import row_reward_type, score_row


@dataclass
class TaskStats:
    count: int = 0
    total: float = 0.0
    positive: int = 0

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def share_positive(self) -> float:
        return self.positive / self.count if self.count else 0.0


@dataclass
class ScoreReport:
    """What happened to a file: per-reward-type stats and one message per skipped line."""

    stats: dict[str, TaskStats] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return sum(s.count for s in self.stats.values())

    def add(self, kind: str, reward: float) -> None:
        stats = self.stats.setdefault(kind, TaskStats())
        stats.count += 1
        stats.total += reward
        stats.positive += reward > 0

    def ordered(self) -> list[tuple[str, TaskStats]]:
        """Stats in REWARD_TYPES order."""
        return sorted(self.stats.items(), key=lambda kv: REWARD_TYPES.index(kv[0]))


def score_one(row: Any, oracle: bool, **variant: Any) -> dict[str, Any]:
    """One scored row; raises `RewardInputError` naming the bad field."""
    if isinstance(row, Exception):  # a row the reader could not read, kept in its place
        raise RewardInputError(str(row))
    if not isinstance(row, dict):
        raise RewardInputError(f"expected a JSON object, got {type(row).__name__}")
    kind = row_reward_type(row)
    response = row.get("response")
    if response is None:
        if not oracle:
            raise RewardInputError("no 'response' field (use --oracle to score a perfect answer built from the ground truth)")
        response = oracle_response(row)
    elif not isinstance(response, str):
        raise RewardInputError(f"'response' must be a string, got {type(response).__name__}")
    reward = score_row(row, response, **variant)
    return {**row, "response": response, "reward": reward, "reward_type": kind}


def score_rows(rows: Iterable[Any], oracle: bool = False, **variant: Any) -> tuple[list[dict[str, Any]], ScoreReport]:
    """Score every row; a bad one is reported as "row N: ..." (N from 1) and left out of the result."""
    Variant.from_kwargs(variant)  # a bad option is one error, not one per row
    report, scored = ScoreReport(), []
    for number, row in enumerate(rows, start=1):
        try:
            out = score_one(row, oracle, **variant)
        except RewardInputError as err:
            report.errors.append(f"row {number}: {err}")
            continue
        report.add(out["reward_type"], out["reward"])
        scored.append(out)
    return scored, report
