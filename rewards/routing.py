"""Which reward scores a row, and `compute_score`, the released scorer's entry point.

A row is routed by `data_source`:

    EM                               -> EM        (text after </think> vs golden_label)
    selection                        -> Accuracy  (multiple choice)
    math_longcot_math_verify         -> Math      (any data_source containing this string, as in
                                                   the released scorer, unless it starts with
                                                   "MATH##" or "aime", which that scorer sends
                                                   elsewhere)
    multitableqa_pretraining         -> IoU
    longbench_pro                    -> by extra_info["reward_mode"]: one of the 25 LongBench-Pro
                                        sub-task names (e.g. "T5.1 Full-Sentence Citation
                                        Alignment"), or, as a golong extension for synthetic
                                        data, a metric name (NDCG, Pairwise, Pairwise_Accuracy,
                                        Accuracy, F1, F1_Score, SubEM, ROUGE-L, Summary)

Anything else raises `UnknownRouteError`, whatever the response (the released scorer raises
too, but only after its think gate has let the response through).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from rewards import accuracy, em, f1, iou, math_reward, ndcg, pairwise, rouge_l, subem
from rewards.errors import MalformedGroundTruthError, RewardInputError, UnknownRouteError
from rewards.parsing import passes_think_gate

REWARD_TYPES: tuple[str, ...] = ("EM", "Accuracy", "F1", "Math", "IoU", "SubEM", "NDCG", "Pairwise", "ROUGE-L")

LONGBENCH_PRO_TASKS: dict[str, str] = {
    "T1.1 Global Cohesive Retrieval": "NDCG",
    "T1.2 Key-Snippet Retrieval": "NDCG",
    "T2.1 Global Timeline Reconstruction": "Pairwise",
    "T2.2 Local Causal Chain Sorting": "Pairwise",
    "T3.1 Multi-Doc Integration QA": "Accuracy",
    "T3.2 Single-Hop Fact QA": "Accuracy",
    "T4.1 Global-Coverage Constrained Summary": "ROUGE-L",
    "T4.2 Query-Focused Summary": "ROUGE-L",
    "T5.1 Full-Sentence Citation Alignment": "F1",
    "T5.2 Key-Statement Citation Alignment": "F1",
    "T6.1 Large-Scale Document Clustering": "SubEM",
    "T6.2 Targeted Subset Cluster Identification": "F1",
    "T6.3 Global Frequency Analysis": "Pairwise",
    "T7.1 Global Conflict & Inconsistency Localization": "F1",
    "T7.2 Targeted Rule or Condition Violation Detection": "F1",
    "T7.3 Comprehensive Error & Anomaly Sweep": "F1",
    "T8.1 Structured Multi-Source Consistency Verification": "SubEM",
    "T8.2 Single-Source Targeted Aggregation": "SubEM",
    "T8.3 Long-Context Procedural State Tracking": "SubEM",
    "T9.1 Dependency-Aware Multi-Version Impact Analysis": "F1",
    "T9.2 Localized Interface Change Detection": "F1",
    "T10.1 Large-Scale In-Context Rule Induction": "SubEM",
    "T10.2 Targeted Example-Based Rule Induction": "SubEM",
    "T11.1 Long-Range Entity & Commitment Tracking": "Accuracy",
    "T11.2 Short-Range Reference Resolution & State Query": "Accuracy",
}

# Metric names accepted as a longbench_pro reward_mode (golong extension; the released scorer
# accepts only the 25 sub-task names). Left: our names and the released scorer's metric names.
LONGBENCH_PRO_METRICS: dict[str, str] = {
    "NDCG": "NDCG",
    "Pairwise": "Pairwise",
    "Pairwise_Accuracy": "Pairwise",
    "Accuracy": "Accuracy",
    "F1": "F1",
    "F1_Score": "F1",
    "SubEM": "SubEM",
    "ROUGE-L": "ROUGE-L",
    "Summary": "ROUGE-L",
}

DATA_SOURCES: dict[str, str | None] = {
    "EM": "EM",
    "selection": "Accuracy",
    "math_longcot_math_verify": "Math",
    "multitableqa_pretraining": "IoU",
    "longbench_pro": None,  # decided by extra_info["reward_mode"]
}


@dataclass(frozen=True)
class Variant:
    """Opt-in departures from the released scorer (defaults reproduce it exactly).

    pairwise_denominator: "prediction" (released) or "gold": divide Pairwise by C(|G|,2).
    rouge_on_answer: score ROUGE-L on the answer after </think> instead of the whole response.
    rouge_language: None (released: the ground truth's `summary` field is the language flag),
        "auto" (Chinese iff the references contain CJK), or a flag string used as is.
    rouge_max_frames: recursion budget of the `rouge` package's LCS backtrack (see rouge_l.py);
        None scores long unpunctuated text instead of failing it to 0.
    math_timeout_s: overall limit for math_verify when called off the main thread.
    """

    pairwise_denominator: str = "prediction"
    rouge_on_answer: bool = False
    rouge_language: str | None = None
    rouge_max_frames: int | None = rouge_l.REFERENCE_MAX_FRAMES
    math_timeout_s: float = math_reward.DEFAULT_TIMEOUT_S

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Variant:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise RewardInputError(f"unknown reward option(s) {unknown}; valid: {sorted(known)}")
        variant = cls(**kwargs)
        if variant.pairwise_denominator not in ("prediction", "gold"):
            raise RewardInputError(
                f"pairwise_denominator={variant.pairwise_denominator!r}; use 'prediction' or 'gold'"
            )
        return variant


def _unknown(what: str, value: Any, valid: list[str]) -> UnknownRouteError:
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownRouteError(f"unknown {what} {value!r}.{hint} Valid: {', '.join(valid)}")


def reward_type(data_source: str, extra_info: Mapping[str, Any] | None) -> str:
    """The reward type (one of REWARD_TYPES) that scores rows of this source / reward_mode."""
    if not isinstance(data_source, str):
        raise UnknownRouteError(f"data_source must be a string, got {type(data_source).__name__}")
    if data_source in DATA_SOURCES:
        mapped = DATA_SOURCES[data_source]
        if mapped is not None:
            return mapped
        mode = extra_info.get("reward_mode") if isinstance(extra_info, Mapping) else None
        if mode is None:
            raise UnknownRouteError(
                "longbench_pro rows need extra_info['reward_mode'] (a LongBench-Pro sub-task name such as "
                "'T5.1 Full-Sentence Citation Alignment')"
            )
        if isinstance(mode, str) and mode in LONGBENCH_PRO_TASKS:
            return LONGBENCH_PRO_TASKS[mode]
        if isinstance(mode, str) and mode in LONGBENCH_PRO_METRICS:
            return LONGBENCH_PRO_METRICS[mode]
        raise _unknown("longbench_pro reward_mode", mode, [*LONGBENCH_PRO_TASKS, *LONGBENCH_PRO_METRICS])
    if "math_longcot_math_verify" in data_source and not data_source.startswith(("MATH##", "aime")):
        return "Math"
    raise _unknown("data_source", data_source, list(DATA_SOURCES))


# ---------------------------------------------------------------- ground truth, as each reward reads it


def _last_if_list(ground_truth: Any) -> Any:
    # The released scorer accepts a list of ground truths for most sources and uses the last.
    return ground_truth[-1] if isinstance(ground_truth, list) and ground_truth else ground_truth


def _golden_label(ground_truth: Any, data_source: str) -> str:
    gt = _last_if_list(ground_truth)
    if not isinstance(gt, Mapping) or "golden_label" not in gt:
        raise MalformedGroundTruthError(
            f"{data_source} rows need reward_model.ground_truth.golden_label, got {type(gt).__name__}"
        )
    label = gt["golden_label"]
    if not isinstance(label, str):
        raise MalformedGroundTruthError(
            f"{data_source} ground_truth.golden_label must be a string, got {type(label).__name__}"
        )
    return label


def _math_golds(ground_truth: Any) -> list[str]:
    gt = _last_if_list(ground_truth)
    if isinstance(gt, Mapping):
        if "golden_label" not in gt:
            raise MalformedGroundTruthError("math rows need reward_model.ground_truth.golden_label")
        gt = gt["golden_label"]
    if isinstance(gt, str):
        return [gt]
    if isinstance(gt, (list, tuple)) and all(isinstance(g, str) for g in gt):
        return list(gt)
    raise MalformedGroundTruthError(f"math golden_label must be a string or list of strings, got {type(gt).__name__}")


def _longbench_fields(ground_truth: Any) -> tuple[list[Any] | None, Any]:
    """(doc_ids as a list or None, the `summary` field) of a longbench_pro ground truth."""
    gt = _last_if_list(ground_truth)
    if not isinstance(gt, Mapping) or "doc_ids" not in gt:
        raise MalformedGroundTruthError(
            f"longbench_pro rows need reward_model.ground_truth.doc_ids, got {type(gt).__name__}"
        )
    doc_ids = gt["doc_ids"]
    if doc_ids is not None and (isinstance(doc_ids, (str, bytes, Mapping)) or not hasattr(doc_ids, "__iter__")):
        raise MalformedGroundTruthError(
            f"longbench_pro ground_truth.doc_ids must be a list of strings, got {type(doc_ids).__name__}"
        )
    # Lenient where the released scorer is not: a missing `summary` means "not Chinese".
    return (None if doc_ids is None else list(doc_ids)), gt.get("summary")


# ---------------------------------------------------------------- scoring


def _longbench_score(kind: str, gold: list[Any] | None, language: Any, response: str, opts: Variant) -> float:
    if not gold:
        return 0.0
    if not all(isinstance(item, str) for item in gold):
        return 0.0  # the released scorer fails on lower() of a non-string item and scores 0
    if kind == "ROUGE-L":
        language = opts.rouge_language if opts.rouge_language is not None else language
        return rouge_l.summary_score(
            gold, response, language, on_answer=opts.rouge_on_answer, max_frames=opts.rouge_max_frames
        )
    if kind == "Pairwise":
        return pairwise.pairwise_score(gold, response, opts.pairwise_denominator)
    metric = {
        "NDCG": ndcg.ndcg_score,
        "Accuracy": accuracy.first_line_accuracy,
        "F1": f1.f1_score,
        "SubEM": subem.subem_score,
    }[kind]
    return metric(gold, response)


def compute_score(
    data_source: str,
    response: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **variant: Any,
) -> float:
    """Reward in [0, 1] for `response`, equal to the released scorer's for these data sources.

    Raises `UnknownRouteError` / `MalformedGroundTruthError` (both `ValueError`) for a row that
    cannot be scored, before looking at the response; never raises because of the response.
    `variant` keywords are the opt-in fixes listed on `Variant`.
    """
    opts = Variant.from_kwargs(variant)
    kind = reward_type(data_source, extra_info)
    if not isinstance(response, str):
        raise RewardInputError(f"response must be a string, got {type(response).__name__}")

    if kind == "EM" or (kind == "Accuracy" and data_source == "selection"):
        label = _golden_label(ground_truth, data_source)
        if not passes_think_gate(response):
            return 0.0
        return em.em_score(response, label) if kind == "EM" else accuracy.mcq_score(response, label)
    if kind == "Math":
        golds = _math_golds(ground_truth)
        return math_reward.math_score(response, golds, opts.math_timeout_s) if passes_think_gate(response) else 0.0
    if kind == "IoU":
        return iou.iou_score(response, ground_truth) if passes_think_gate(response) else 0.0
    gold, language = _longbench_fields(ground_truth)
    if not passes_think_gate(response):
        return 0.0
    try:
        score = _longbench_score(kind, gold, language, response, opts)
    except (RecursionError, MemoryError):  # the released scorer scores any failure here as 0
        return 0.0
    return float(score) if 0.0 <= score <= 1.0 else 0.0
