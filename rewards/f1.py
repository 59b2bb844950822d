"""F1 (exhaustive retrieval): set F1 between answer lines and gold items.

    P = set(answer lines), G = set(gold items), c = |P ∩ G|
    F1 = 2·(c/|P|)·(c/|G|) / (c/|P| + c/|G|),   0 when c = 0

Blank answer lines are items too, so they lower precision.
"""

from __future__ import annotations

from rewards.parsing import normalize_gold, prediction_lines


def f1_score(gold: list[str], response: str) -> float:
    gold_set = set(normalize_gold(gold))
    pred_set = set(prediction_lines(response))
    common = len(gold_set & pred_set)
    if common == 0:
        return 0.0
    precision = common / len(pred_set)
    recall = common / len(gold_set)
    return (2 * precision * recall) / (precision + recall)
