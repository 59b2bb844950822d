"""NDCG (graded ranking), as trec_eval's `ndcg_cut.k` computes it with k = |gold|.

Gold item i (0-based) has relevance |G| − i; a repeated gold item keeps the relevance of its
last occurrence. The answer lines are ranked by their last occurrence (a repeated line moves
down to its last position), lines not in the gold list have relevance 0.

    DCG@k  = Σ_{r < k} rel(ranked[r]) / log2(r + 2)
    IDCG@k = same sum over the gold relevances sorted high to low
    NDCG   = DCG@k / IDCG@k
"""

from __future__ import annotations

import math

from rewards.parsing import normalize_gold, prediction_lines


def _dcg(gains: list[int]) -> float:
    total = 0.0
    for rank, gain in enumerate(gains):
        if gain != 0:
            total += gain / math.log2(rank + 2)
    return total


def ndcg_score(gold: list[str], response: str) -> float:
    gold_items = normalize_gold(gold)
    if not gold_items:
        return 0.0
    cutoff = len(gold_items)
    relevance = {item: cutoff - i for i, item in enumerate(gold_items)}
    last_position = {line: i for i, line in enumerate(prediction_lines(response))}
    ranked = sorted(last_position, key=last_position.__getitem__)[:cutoff]
    ideal = _dcg(sorted(relevance.values(), reverse=True)[:cutoff])
    return _dcg([relevance.get(line, 0) for line in ranked]) / ideal
