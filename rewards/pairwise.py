"""Pairwise accuracy (sequence ordering).

    correct = #{(a, b) : a before b in the gold list, both answer lines, pos(a) < pos(b)}
    score   = correct / C(|P|, 2)            (P = answer lines, blank lines and repeats included)

pos(x) is the *last* line holding x. 0 when |G| ≤ 1 or |P| ≤ 1. The denominator counts pairs of
the prediction, not of the gold list: that is the released scorer's choice, kept by default.
Repeated gold items can push the score above 1, which the released scorer treats as an error
and scores 0; so does this one.

Opt-in fix: `denominator="gold"` divides by C(|G|, 2), so extra or blank lines cost nothing and
a missing item costs its pairs.
"""

from __future__ import annotations

from itertools import combinations

from rewards.parsing import normalize_gold, prediction_lines


def pairwise_score(gold: list[str], response: str, denominator: str = "prediction") -> float:
    gold_items = normalize_gold(gold)
    lines = prediction_lines(response)
    if len(gold_items) <= 1 or len(lines) <= 1:
        return 0.0
    position = {line: i for i, line in enumerate(lines)}
    correct = sum(
        1
        for a, b in combinations(gold_items, 2)
        if a in position and b in position and position[a] < position[b]
    )
    size = len(gold_items) if denominator == "gold" else len(lines)
    score = correct / (size * (size - 1) // 2)
    return score if 0.0 <= score <= 1.0 else 0.0
