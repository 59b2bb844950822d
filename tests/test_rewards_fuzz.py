"""Robustness: any response string, through every reward type, gives a float in [0, 1], fast."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards import REWARD_TYPES, compute_score, reward_type

ROUTES = [
    ("EM", {"golden_label": "Paris", "doc_ids": [], "summary": ""}, None),
    ("selection", {"golden_label": "B"}, None),
    ("multitableqa_pretraining", {"golden_label": '{"data": [[1, "a"], [2, "b"]]}'}, None),
] + [
    ("longbench_pro", {"doc_ids": ["a", "b c", "[答案]", ""], "summary": language}, {"reward_mode": mode})
    for mode, language in [
        ("T1.1 Global Cohesive Retrieval", "English"),
        ("T2.2 Local Causal Chain Sorting", "English"),
        ("T3.1 Multi-Doc Integration QA", "English"),
        ("T4.1 Global-Coverage Constrained Summary", "English"),
        ("T4.2 Query-Focused Summary", "Chinese"),
        ("T5.2 Key-Statement Citation Alignment", "English"),
        ("T8.1 Structured Multi-Source Consistency Verification", "English"),
    ]
]
MATH = ("math_longcot_math_verify", {"golden_label": "\\frac{1}{2}"}, None)
assert {reward_type(ds, extra) for ds, _, extra in [*ROUTES, MATH]} == set(REWARD_TYPES)

TRICKY = ["</think>", "<think>", "[Answer]", "[答案]", "[answer]", "<answer>", "</answer>", "{", "}", "[", "]",
          '{"data": [[1, "a"]', "\\boxed{", "\\frac{1}{2}", ".", "\n", " ", "\t", "a", "b c", "今天天气",
          "The correct answer is (", "B", ")", "**", "\x00", "\u2028", "İ", "\r\n"]  # fmt: skip
texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=5)), max_size=60).map("".join),
)


def _check(data_source, gt, extra, response) -> float:
    score = compute_score(data_source, response, gt, extra)
    assert isinstance(score, float) and 0.0 <= score <= 1.0
    return score


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=texts, wrap=st.sampled_from(["{}", "<think>x</think>{}", "{}</think>", "<think>{}</think>ok"]))
def test_any_text_any_route(body, wrap):
    response = wrap.format(body)
    for data_source, gt, extra in ROUTES:
        _check(data_source, gt, extra, response)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=texts)
def test_any_text_math(body):
    _check(*MATH, "<think>x</think>" + body)


ADVERSARIAL = {
    "many markers": "<think>x</think>" + "[Answer]\na\n" * 100_000,
    "many chinese markers": "<think>x</think>" + "[答案] a " * 100_000,
    "nested braces": "<think>x</think><answer>" + "{" * 200_000 + "}" * 200_000 + "</answer>",
    "deep json list": '<think>x</think><answer>{"data": ' + "[" * 100_000 + "]" * 100_000 + "}</answer>",
    "huge one-sentence text": "<think>x</think>" + " ".join(["a", "b c"] * 150_000),
    "huge text with dots": "<think>x</think>" + "a b. c d. " * 60_000,
    "many boxes": "<think>x</think>" + "\\boxed{" * 50_000 + "}" * 50_000,
    "megabyte of noise": "<think>x</think>" + "xy z\n" * 250_000,
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_inputs_are_bounded(name):
    response = ADVERSARIAL[name]
    for route in [*ROUTES, MATH]:
        start = time.perf_counter()
        _check(*route, response)
        assert time.perf_counter() - start < 10, (name, route[0], route[2])


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=texts, wrap=st.sampled_from(["{}", "<think>x</think>{}", "{}</think>"]))
def test_any_text_any_route_long(body, wrap):
    for route in [*ROUTES, MATH]:
        _check(*route, wrap.format(body))
