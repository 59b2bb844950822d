"""Response parsing shared by the GoLongRL rewards.

Three steps, matching the released scorer character for character:

* the think gate: a response scores 0 unless it holds exactly one `</think>` and at most one
  `<think>` (checked before any reward looks at the text);
* `after_think`: the text after the last `</think>` (EM and multiple choice score only this);
* LongBench-Pro answers: the text after the last `[Answer]` marker (or, only when no `[Answer]`
  is present, after the last `[答案]`), stripped, lower-cased, split on "\\n", and each line
  stripped with whitespace runs collapsed to one space. Blank lines, bullets and commas are kept
  as they are: "- a" and "a, b" are single items that match nothing but themselves.
"""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_MARKER = "[Answer]"
ANSWER_MARKER_ZH = "[答案]"


def passes_think_gate(response: str) -> bool:
    """True iff `response` has exactly one `</think>` and at most one `<think>`."""
    return response.count(THINK_CLOSE) == 1 and response.count(THINK_OPEN) <= 1


def after_think(response: str) -> str:
    """Text after the last `</think>` (the whole text when there is none)."""
    return response.rpartition(THINK_CLOSE)[2]


def answer_area(text: str) -> str:
    """Text after the last `[Answer]`, else after the last `[答案]`, else all of it; stripped.

    `[Answer]` wins whenever it occurs anywhere, even before a later `[答案]`. The marker test is
    case-sensitive (lower-casing happens afterwards), so `[answer]` is plain text.
    """
    if ANSWER_MARKER in text:
        text = text[text.rfind(ANSWER_MARKER) + len(ANSWER_MARKER) :]
    elif ANSWER_MARKER_ZH in text:
        text = text[text.rfind(ANSWER_MARKER_ZH) + len(ANSWER_MARKER_ZH) :]
    return text.strip()


def collapse_spaces(text: str) -> str:
    """Whitespace runs (any Unicode whitespace) become one space; ends trimmed."""
    return " ".join(text.split())


def normalize_text(text: str) -> str:
    """Lower-case and collapse whitespace: how gold items and summaries are compared."""
    return collapse_spaces(text.lower())


def normalize_gold(items: list[str]) -> list[str]:
    """Each gold item lower-cased with whitespace collapsed (an item is never split)."""
    return [normalize_text(item) for item in items]


def prediction_lines(response: str) -> list[str]:
    """The answer area of `response`, lower-cased, one normalised item per "\\n"-separated line.

    Never empty: a response without text gives `[""]`.
    """
    return [collapse_spaces(line) for line in answer_area(response).lower().split("\n")]
