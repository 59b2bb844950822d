"""SubEM (structured matching): the share of gold items that appear as an exact answer line.

    SubEM = (1/|G|) · Σ_{g in G} [g ∈ answer lines]     (G as a list: repeated items count twice)
"""

from __future__ import annotations

from rewards.parsing import normalize_gold, prediction_lines


def subem_score(gold: list[str], response: str) -> float:
    gold_items = normalize_gold(gold)
    if not gold_items:
        return 0.0
    lines = set(prediction_lines(response))
    return sum(1.0 for item in gold_items if item in lines) / len(gold_items)
