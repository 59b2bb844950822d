"""IoU (multi-table extraction): multiset overlap of predicted and gold table rows.

The prediction is the JSON between the first `<answer>` and the next `</answer>` (the whole
response, stripped, when there is no `<answer>`), read as `{"data": [row, ...]}`. The gold table
is `golden_label` read the same way. A row is keyed by `str()` of each parsed cell (a row that
is not a list is keyed by `str()` of itself), so 1 and "1" are the same cell but 1.0 and 1 are not.

    m = |P ∩ G| (multiset),  IoU = m / (|P| + |G| − m),  0 when the denominator is 0

Unparseable JSON, a top level that is not an object, or `data` that is not a list score 0.
Bounded work: answers over `MAX_JSON_CHARS` characters score 0 without being parsed, and JSON
nested too deep for the parser scores 0 instead of raising.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

# A 16K-token response is ~64K characters; 4M leaves room for any real table.
MAX_JSON_CHARS = 4_000_000


def answer_span(response: str) -> str:
    """From the first `<answer>` to the next `</answer>` (or the end), stripped."""
    if "<answer>" not in response:
        return response.strip()
    return response.partition("<answer>")[2].partition("</answer>")[0].strip()


_FAILED = object()


def _load(text: str | bytes | bytearray) -> Any:
    """Parsed JSON, or a sentinel `_FAILED` for anything the parser rejects or cannot bound."""
    if len(text) > MAX_JSON_CHARS:
        return _FAILED
    try:
        return json.loads(text)
    except (ValueError, RecursionError, MemoryError):  # ValueError covers JSONDecodeError
        return _FAILED


def _row_key(row: Any) -> Any:
    return tuple(str(cell) for cell in row) if isinstance(row, list) else str(row)


def _counter(rows: Any) -> Counter | None:
    try:
        return Counter(_row_key(row) for row in rows)
    except (RecursionError, MemoryError, TypeError):
        return None


def _gold_table(ground_truth: Any) -> Any:
    """The gold table object: `golden_label` parsed when present, else the ground truth itself."""
    if isinstance(ground_truth, dict) and "golden_label" in ground_truth:
        label = ground_truth["golden_label"]
        return _load(label) if isinstance(label, (str, bytes, bytearray)) else _FAILED
    return ground_truth


def iou_score(response: str, ground_truth: Any) -> float:
    """`ground_truth` is the row's ground truth: a dict whose `golden_label` holds the gold JSON."""
    gold = _gold_table(ground_truth)
    if gold is _FAILED:
        return 0.0
    parsed = _load(answer_span(response))
    pred = parsed.get("data", []) if isinstance(parsed, dict) else []
    if not isinstance(pred, list):
        return 0.0
    gold_rows = gold.get("data", []) if isinstance(gold, dict) else []
    if not isinstance(gold_rows, (list, str, dict)):  # other types have no length to count
        return 0.0
    pred_count, gold_count = _counter(pred), _counter(gold_rows)
    if pred_count is None or gold_count is None:
        return 0.0
    matches = sum((pred_count & gold_count).values())
    total = len(pred) + len(gold_rows) - matches
    return matches / total if total > 0 else 0.0
