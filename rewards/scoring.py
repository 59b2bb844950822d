"""Score a JSONL file of responses: the work behind `golong rewards score`.

Input: one dataset row per line (GoLongRL schema) plus a `response` string. Output: the same
rows with `reward` (float) and `reward_type` (str) added. A bad line (not JSON, a missing field,
an unknown route) is reported with its line number and skipped; the others are still scored.
With `oracle=True`, a row without `response` is scored against `oracle_response(row)`, which is
also written out as its `response`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
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


def score_line(text: str, oracle: bool, **variant: Any) -> dict[str, Any]:
    """One scored row from one JSONL line; raises `RewardInputError` naming the bad field."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise RewardInputError(f"not valid JSON ({err.msg} at column {err.colno})") from None
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


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, start=1):
            if text.strip():
                yield number, text


def score_jsonl(in_path: str | Path, out_path: str | Path, oracle: bool = False, **variant: Any) -> ScoreReport:
    """Score every line of `in_path` into `out_path` (written atomically at the end)."""
    Variant.from_kwargs(variant)  # a bad option is one error, not one per line
    in_path, out_path = Path(in_path), Path(out_path)
    report = ScoreReport()
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tmp_path.open("w", encoding="utf-8") as out:
        for number, text in _lines(in_path):
            try:
                scored = score_line(text, oracle, **variant)
            except RewardInputError as err:
                report.errors.append(f"line {number}: {err}")
                continue
            report.add(scored["reward_type"], scored["reward"])
            out.write(json.dumps(scored, ensure_ascii=False) + "\n")
    tmp_path.replace(out_path)
    return report
