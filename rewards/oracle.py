"""A response that earns the top reward for a row, built from its ground truth.

Used to check data and rewards end to end (`golong rewards score --oracle`) and in task tests.
Every oracle is "<think>...</think>" followed by the answer in the form its reward parses:

    EM        the golden label
    Accuracy  "The correct answer is (X)" (multiple choice) / "[Answer]" + the first gold item
    Math      "\\boxed{gold}" at the very end
    IoU       "<answer>" + the gold JSON + "</answer>"
    F1, SubEM, Pairwise, NDCG   "[Answer]" + one gold item per line (NDCG: ordered by relevance)
    ROUGE-L   the first reference, after an empty "<think></think>"

The released ROUGE-L scores the whole response, so the think tags count as one extra word and
the oracle scores just under the perfect 0.999999995 (exactly that with `rouge_on_answer=True`).
A gold answer that no response can match (an unparseable math answer, a choice outside A-D)
still gets a best-effort response.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rewards.accuracy import extract_choice
from rewards.parsing import ANSWER_MARKER, normalize_gold
from rewards.routing import _golden_label, _longbench_fields, _math_golds
from rewards.rows import row_fields, row_reward_type

THINKING = "<think>\nThe answer follows from the ground truth of this row.\n</think>\n\n"


def _lines(items: list[str]) -> str:
    return f"{THINKING}{ANSWER_MARKER}\n" + "\n".join(items)


def _iou_answer(ground_truth: Any) -> str:
    label = ground_truth.get("golden_label") if isinstance(ground_truth, Mapping) else None
    text = label if isinstance(label, str) else json.dumps(ground_truth, ensure_ascii=False)
    # "</answer>" can only sit inside a JSON string, where "<\/" is the same text.
    return text.replace("</answer>", "<\\/answer>")


def oracle_response(row: Mapping[str, Any]) -> str:
    """A response that `score_row(row, ...)` rewards with its maximum."""
    data_source, ground_truth, _ = row_fields(row)
    kind = row_reward_type(row)
    if kind == "EM":
        return THINKING + _golden_label(ground_truth, data_source).strip()
    if kind == "Accuracy" and data_source == "selection":
        label = _golden_label(ground_truth, data_source)
        return THINKING + f"The correct answer is ({extract_choice(label) or label.strip()})"
    if kind == "Math":
        return THINKING + f"The final answer is \\boxed{{{_math_golds(ground_truth)[0]}}}"
    if kind == "IoU":
        return f"{THINKING}<answer>{_iou_answer(ground_truth)}</answer>"
    gold, _ = _longbench_fields(ground_truth)
    gold = [str(item) for item in gold or []]
    if kind == "ROUGE-L":
        return "<think></think>\n" + (gold[0] if gold else "")
    items = normalize_gold(gold)
    if kind == "Accuracy":
        return _lines(items[:1])
    if kind == "NDCG":
        # An item's relevance comes from its last occurrence in the gold list: rank by that.
        last = {item: i for i, item in enumerate(items)}
        return _lines(sorted(last, key=last.__getitem__))
    return _lines(list(dict.fromkeys(items)))
