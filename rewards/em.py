"""EM (precise retrieval): the answer after `</think>` must equal the gold label exactly.

    reward = 1  if after_think(response).strip() == golden_label.strip()  else 0

Case, inner whitespace and punctuation all count: only the ends are stripped.
"""

from __future__ import annotations

from rewards.parsing import after_think


def em_score(response: str, golden_label: str) -> float:
    return 1.0 if after_think(response).strip() == golden_label.strip() else 0.0
