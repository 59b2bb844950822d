"""Accuracy (comprehension), in the two forms GoLongRL uses.

Multiple choice (`data_source == "selection"`): after removing every `*` from the text after
`</think>`, the first "The correct answer is (X)" gives X; failing that, the first
"The correct answer is X" does (so "...is Apple" reads as A). X is one of A-D. The reward is 1
when X equals the raw gold label, or the letter the same extraction finds in the gold label.

LongBench-Pro Accuracy: 1 iff the first answer line equals the first gold item (after the
LongBench-Pro normalisation); further gold items are ignored.
"""

from __future__ import annotations

import re

from rewards.parsing import after_think, normalize_gold, prediction_lines

# Both patterns are anchored on a literal prefix and take one character: linear time.
_PAREN_FORM = re.compile(r"The correct answer is \(([A-D])\)")
_BARE_FORM = re.compile(r"The correct answer is ([A-D])")


def extract_choice(text: str) -> str | None:
    """The chosen letter A-D, or None (the parenthesised form is looked for first)."""
    text = text.replace("*", "")
    match = _PAREN_FORM.search(text) or _BARE_FORM.search(text)
    return match.group(1) if match else None


def mcq_score(response: str, golden_label: str) -> float:
    choice = extract_choice(after_think(response))
    if choice is None:
        return 0.0
    return 1.0 if choice in (golden_label, extract_choice(golden_label)) else 0.0


def first_line_accuracy(gold: list[str], response: str) -> float:
    gold_items = normalize_gold(gold)
    if not gold_items:
        return 0.0
    return 1.0 if prediction_lines(response)[0] == gold_items[0] else 0.0
