"""Hand-computed cases for every GoLongRL reward and every quirk of the released scorer."""

from __future__ import annotations

import math
import threading

import pytest

import rewards
from rewards import (
    LONGBENCH_PRO_TASKS,
    REWARD_TYPES,
    MalformedGroundTruthError,
    RewardInputError,
    UnknownRouteError,
    compute_score,
    oracle_response,
    reward_type,
    score_row,
)
from rewards.rouge_l import rouge_l_f

# A representative LongBench-Pro sub-task per reward type.
MODE = {
    "NDCG": "T1.1 Global Cohesive Retrieval",
    "Pairwise": "T2.1 Global Timeline Reconstruction",
    "Accuracy": "T3.2 Single-Hop Fact QA",
    "ROUGE-L": "T4.2 Query-Focused Summary",
    "F1": "T5.1 Full-Sentence Citation Alignment",
    "SubEM": "T6.1 Large-Scale Document Clustering",
}


def lb(kind: str, gold: list, response: str, summary: str = "English", **variant) -> float:
    gt = {"doc_ids": gold, "golden_label": "", "summary": summary}
    return compute_score("longbench_pro", response, gt, {"reward_mode": MODE[kind]}, **variant)


def em(response: str, label: str) -> float:
    return compute_score("EM", response, {"golden_label": label, "doc_ids": [], "summary": ""})


def mcq(response: str, label: str) -> float:
    return compute_score("selection", response, {"golden_label": label})


def iou(response: str, gold_json: str) -> float:
    return compute_score("multitableqa_pretraining", response, {"golden_label": gold_json})


def mathv(response: str, gold) -> float:
    return compute_score("math_longcot_math_verify", response, {"golden_label": gold})


T = "<think>reasoning</think>"


# ---------------------------------------------------------------- the think gate


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>x</think>Paris", 1.0),
        ("x</think>Paris", 1.0),  # no <think> at all is fine
        ("Paris", 0.0),  # no </think>
        ("<think>x</think>y</think>Paris", 0.0),  # two </think>
        ("<think><think>x</think>Paris", 0.0),  # two <think>
        ("<THINK>x</THINK>Paris", 0.0),  # tags are case-sensitive
    ],
)
def test_think_gate(response, expected):
    assert em(response, "Paris") == expected


def test_gate_applies_to_every_reward_type():
    row_sets = [
        ("EM", {"golden_label": "a"}, None, "a"),
        ("selection", {"golden_label": "A"}, None, "The correct answer is (A)"),
        ("math_longcot_math_verify", {"golden_label": "3"}, None, "\\boxed{3}"),
        ("multitableqa_pretraining", {"golden_label": '{"data": [[1]]}'}, None, '<answer>{"data": [[1]]}</answer>'),
    ]
    row_sets += [("longbench_pro", {"doc_ids": ["a", "b"], "summary": "English"}, {"reward_mode": m}, "[Answer]\na\nb") for m in MODE.values()]
    for data_source, gt, extra, answer in row_sets:
        assert compute_score(data_source, "<think>x</think>" + answer, gt, extra) > 0, data_source
        assert compute_score(data_source, answer, gt, extra) == 0.0
        assert compute_score(data_source, "<think>x</think></think>" + answer, gt, extra) == 0.0


# ---------------------------------------------------------------- EM


def test_em_exact_after_think_case_sensitive():
    assert em(T + "  Paris \n", "Paris") == 1.0
    assert em(T + "Paris", " Paris\n") == 1.0  # gold is stripped too
    assert em(T + "paris", "Paris") == 0.0  # case counts
    assert em(T + "Paris.", "Paris") == 0.0
    assert em(T + "Pa  ris", "Pa ris") == 0.0  # inner whitespace counts
    assert em("<think>Paris</think>London", "Paris") == 0.0  # only the text after </think>


def test_em_list_ground_truth_uses_last():
    gts = [{"golden_label": "old"}, {"golden_label": "new"}]
    assert compute_score("EM", T + "new", gts) == 1.0
    assert compute_score("EM", T + "old", gts) == 0.0


# ---------------------------------------------------------------- multiple choice


@pytest.mark.parametrize(
    "answer, label, expected",
    [
        ("The correct answer is (B)", "B", 1.0),
        ("The correct answer is (B)", "The correct answer is (B)", 1.0),  # letter read from the label
        ("**The correct answer is (B)**", "B", 1.0),  # asterisks removed
        ("The correct *answer* is (B)", "B", 1.0),
        ("The correct answer is B.", "B", 1.0),  # bare form
        ("The correct answer is Apple", "A", 1.0),  # bare form reads the first letter: a quirk
        ("the correct answer is (B)", "B", 0.0),  # case-sensitive phrase
        ("The correct answer is (E)", "E", 0.0),  # only A-D
        ("The correct answer is (B)", "b", 0.0),
        ("The correct answer is (B)", " B", 0.0),  # the raw label is compared unstripped
        ("The correct answer is (A). No: The correct answer is (B)", "B", 0.0),  # first match wins
        ("The correct answer is C. Finally The correct answer is (D)", "D", 1.0),  # (X) form looked for first
        ("B", "B", 0.0),  # no phrase, no answer
    ],
)
def test_mcq(answer, label, expected):
    assert mcq(T + answer, label) == expected


def test_mcq_reads_only_after_think():
    assert mcq("<think>The correct answer is (B)</think>none", "B") == 0.0


# ---------------------------------------------------------------- LongBench-Pro parsing


def test_answer_marker_english_wins_over_chinese():
    # "[Answer]" anywhere beats a later "[答案]": the area is " a [答案] b", one item.
    assert lb("F1", ["b"], T + "[Answer] a [答案] b") == 0.0
    assert lb("F1", ["a [答案] b"], T + "[Answer] a [答案] b") == 1.0
    assert lb("F1", ["b"], T + "[答案] a\n[答案]\nb") == 1.0  # last [答案] when no [Answer]
    assert lb("F1", ["y"], T + "[Answer] x\n[Answer] y") == 1.0  # last marker


def test_lowercase_answer_marker_is_text():
    assert lb("F1", ["b"], T + "\n[answer] b") == 0.0
    # no marker: lines "<think>reasoning</think>" and "[answer] b"
    assert lb("F1", ["[answer] b"], T + "\n[answer] b") == pytest.approx(2 / 3)


def test_without_marker_whole_response_is_parsed():
    # lines: "<think>x</think>", "b"  ->  P has 2 items, G = {b}: F1 = 2·(1/2·1)/(1/2+1) = 2/3
    assert lb("F1", ["b"], "<think>x</think>\nb") == pytest.approx(2 / 3)
    # a marker inside the thinking still counts: area "a</think>"
    assert lb("F1", ["a"], "<think>[Answer] a</think>") == 0.0
    assert lb("F1", ["a</think>"], "<think>[Answer] a</think>") == 1.0


def test_bullets_commas_blank_lines_stay_items():
    assert lb("F1", ["a", "b"], T + "[Answer]\n- a\n- b") == 0.0
    assert lb("SubEM", ["a", "b"], T + "[Answer] a, b") == 0.0
    # blank line is an item: P = {a, "", b}: F1 = 2·(2/3·1)/(2/3+1) = 0.8
    assert lb("F1", ["a", "b"], T + "[Answer]\na\n\nb") == pytest.approx(0.8)


def test_lowercase_and_whitespace_collapse():
    assert lb("F1", ["Foo Bar"], T + "[Answer]\n  FOO \t  bar  \n") == 1.0
    assert lb("F1", ["foo\nbar"], T + "[Answer] foo bar") == 1.0  # gold items are collapsed, not split


# ---------------------------------------------------------------- Accuracy (LongBench-Pro), F1, SubEM


def test_longbench_accuracy_first_line_first_gold_item():
    assert lb("Accuracy", ["B", "C"], T + "[Answer]\nb\nanything") == 1.0
    assert lb("Accuracy", ["B", "C"], T + "[Answer]\nc\nb") == 0.0
    assert lb("Accuracy", ["x", "b"], T + "[Answer] b") == 0.0  # only gold[0] counts
    assert lb("Accuracy", ["b"], T + "[Answer] b and more") == 0.0


def test_f1_values():
    # P = {a, b, d}, G = {a, b, c}: c = 2, P = R = 2/3
    assert lb("F1", ["a", "b", "c"], T + "[Answer]\na\nb\nd") == pytest.approx(2 / 3)
    assert lb("F1", ["a", "b"], T + "[Answer]\nx") == 0.0
    # repeated lines are one set element: P = {a}, G = {a, b}: F1 = 2·(1·1/2)/(3/2) = 2/3
    assert lb("F1", ["a", "b"], T + "[Answer]\na\na\na") == pytest.approx(2 / 3)


def test_subem_values():
    assert lb("SubEM", ["a", "b", "c", "d"], T + "[Answer]\na\nc\nx") == 0.5
    assert lb("SubEM", ["a", "a", "b"], T + "[Answer] a") == pytest.approx(2 / 3)  # repeats count


def test_empty_or_non_string_gold_scores_zero():
    assert lb("F1", [], T + "[Answer] a") == 0.0
    assert lb("F1", None, T + "[Answer] a") == 0.0
    assert lb("SubEM", ["a", 3], T + "[Answer] a\n3") == 0.0  # released scorer: lower() fails -> 0


# ---------------------------------------------------------------- NDCG


def test_ndcg_values():
    log3 = math.log2(3)
    ideal = 3 + 2 / log3 + 1 / 2
    assert lb("NDCG", ["a", "b", "c"], T + "[Answer]\na\nb\nc") == 1.0
    assert lb("NDCG", ["a", "b", "c"], T + "[Answer]\nb\na\nc") == pytest.approx((2 + 3 / log3 + 1 / 2) / ideal)
    # cutoff |G| = 2: only "x", "a" count
    assert lb("NDCG", ["a", "b"], T + "[Answer]\nx\na\nb") == pytest.approx((2 / log3) / (2 + 1 / log3))
    assert lb("NDCG", ["a", "b"], T + "[Answer]\nx\ny\na\nb") == 0.0
    # a repeated line is ranked at its last position: ranking b, a
    assert lb("NDCG", ["a", "b"], T + "[Answer]\na\nb\na") == pytest.approx((1 + 2 / log3) / (2 + 1 / log3))


# ---------------------------------------------------------------- Pairwise


def test_pairwise_values_and_quirks():
    assert lb("Pairwise", ["a", "b", "c"], T + "[Answer]\na\nb\nc") == 1.0
    assert lb("Pairwise", ["a", "b", "c"], T + "[Answer]\na\nc\nb") == pytest.approx(2 / 3)
    # denominator counts prediction pairs: C(4,2) = 6
    assert lb("Pairwise", ["a", "b", "c"], T + "[Answer]\na\nb\nc\nx") == 0.5
    assert lb("Pairwise", ["a", "b", "c"], T + "[Answer]\na\nb\nc\nx", pairwise_denominator="gold") == 1.0
    # a missing item costs nothing by default: only (a, c), over C(2,2) = 1
    assert lb("Pairwise", ["a", "b", "c"], T + "[Answer]\na\nc") == 1.0
    assert lb("Pairwise", ["a", "b", "c"], T + "[Answer]\na\nc", pairwise_denominator="gold") == pytest.approx(1 / 3)
    assert lb("Pairwise", ["a"], T + "[Answer]\na\nb") == 0.0  # |G| <= 1
    assert lb("Pairwise", ["a", "b"], T + "[Answer] a") == 0.0  # |P| <= 1
    # repeated gold: pairs (a,a) (a,b) (a,b) -> 2 correct over C(2,2) = 1 -> 2 > 1 -> 0
    assert lb("Pairwise", ["a", "a", "b"], T + "[Answer]\na\nb") == 0.0
    assert lb("Pairwise", ["a", "a", "b"], T + "[Answer]\na\nb", pairwise_denominator="gold") == pytest.approx(2 / 3)


# ---------------------------------------------------------------- ROUGE-L


def test_rouge_perfect_match_value():
    assert rouge_l_f("the cat sat", "the cat sat") == 0.999999995
    assert lb("ROUGE-L", ["The cat sat"], T + "the cat sat", rouge_on_answer=True) == 0.999999995


def test_rouge_scores_whole_response_by_default():
    # hypothesis "<think></think>the cat sat": the glued first word misses; LCS {cat, sat}, m = n = 3
    p = r = 2 / 3
    expected = 2.0 * ((p * r) / (p + r + 1e-8))
    assert lb("ROUGE-L", ["The cat sat"], "<think></think>the cat sat") == expected


def test_rouge_distinct_words_and_union():
    # ref "a a b": m = 2 distinct words; hyp "a b": n = 2; union {a, b}
    assert rouge_l_f("a b", "a a b") == 0.999999995
    # two hypothesis sentences each match part of the reference sentence: union {a, b, c}
    assert rouge_l_f("a b. c", "a b c") == 0.999999995


def test_rouge_empty_reference_or_only_dots_is_zero():
    assert lb("ROUGE-L", [""], T + "the cat") == 0.0
    assert lb("ROUGE-L", ["..."], T + "the cat") == 0.0
    # one failing reference fails the whole call (max is never reached)
    assert lb("ROUGE-L", ["the cat", "..."], T + "the cat", rouge_on_answer=True) == 0.0
    assert lb("ROUGE-L", ["the cat", "a dog"], T + "the cat", rouge_on_answer=True) == 0.999999995


def test_rouge_jieba_only_for_exact_chinese_flag():
    import jieba
    from rouge import Rouge

    gold, answer = "今天天气很好", "今天天气很好啊"
    response = "</think>" + answer
    seg = lambda s: " ".join(jieba.cut(s, cut_all=False))  # noqa: E731
    expected = Rouge().get_scores([seg(response)], [seg(gold)])[0]["rouge-l"]["f"]
    assert expected > 0.5
    assert lb("ROUGE-L", [gold], response, summary="Chinese") == expected
    assert lb("ROUGE-L", [gold], response, summary="chinese") == 0.0  # one unsegmented word each
    assert lb("ROUGE-L", [gold], response, summary="English") == 0.0
    assert lb("ROUGE-L", [gold], response, summary="English", rouge_language="auto") == expected


def test_rouge_long_unpunctuated_sentence_fails_like_the_package():
    words = " ".join(f"w{i}" for i in range(1200))
    response = "<think></think> " + words
    # the package's recursive backtrack needs ~1200 frames for this pair: RecursionError -> 0
    assert lb("ROUGE-L", ["w0 w1 w2"], response) == 0.0
    fixed = lb("ROUGE-L", ["w0 w1 w2"], response, rouge_max_frames=None)
    p, r = 3 / 1201, 1.0
    assert fixed == pytest.approx(2 * p * r / (p + r + 1e-8))
    # the same words in 50-word sentences are fine
    dotted = " ".join(f"w{i}" + ("." if i % 50 == 49 else "") for i in range(1200))
    assert lb("ROUGE-L", ["w0 w1 w2"], "<think></think> " + dotted) == pytest.approx(fixed, rel=1e-6)


# ---------------------------------------------------------------- math


def test_math_boxed_and_equivalence():
    assert mathv(T + "so the answer is \\boxed{42}", "42") == 1.0
    assert mathv(T + "so the answer is \\boxed{41}", "42") == 0.0
    assert mathv(T + "\\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert mathv(T + "\\boxed{0.5}", ["7", "1/2"]) == 1.0  # any gold in a list


def test_math_reads_last_500_chars_of_whole_response():
    assert mathv("<think>\\boxed{42}</think>done", "42") == 1.0  # thinking counts if in the tail
    filler = " ok" * 200  # 600 characters after the box
    assert mathv(T + "\\boxed{42}" + filler, "42") == 0.0
    assert mathv(T + "\\boxed{42}" + filler[:480], "42") == 1.0


def test_math_off_main_thread_gives_same_scores():
    cases = [(T + "\\boxed{\\frac{1}{2}}", "0.5", 1.0), (T + "\\boxed{3}", "4", 0.0)]
    results = []
    thread = threading.Thread(target=lambda: results.extend(mathv(r, g) for r, g, _ in cases))
    thread.start()
    thread.join(60)
    assert results == [expected for _, _, expected in cases]


# ---------------------------------------------------------------- IoU


GOLD_TABLE = '{"data": [[1, "a"], [2, "b"]]}'


@pytest.mark.parametrize(
    "answer, expected",
    [
        ('<answer>{"data": [[1, "a"], [2, "b"]]}</answer>', 1.0),
        ('<answer>{"data": [[2, "b"], [1, "a"]]}</answer>', 1.0),  # row order free
        ('<answer>{"data": [[1, "a"]]}</answer>', 0.5),  # m=1, 1+2-1
        ('<answer>{"data": [[1, "a"], [1, "a"]]}</answer>', 1 / 3),  # multiset: m=1, 2+2-1
        ('<answer>{"data": [["1", "a"]]}</answer>', 0.5),  # str(1) == "1"
        ('<answer>{"data": [[1.0, "a"]]}</answer>', 0.0),  # "1.0" != "1"
        ('<answer>{"data": [[1, "a"], [3, "c"]]}</answer>', 1 / 3),
        ("<answer>{bad json</answer>", 0.0),
        ('<answer>{"data": {"x": 1}}</answer>', 0.0),
        ('<answer>[[1, "a"]]</answer>', 0.0),  # top level must be an object
        ('{"data": [[1, "a"], [2, "b"]]}', 0.0),  # no <answer>: the whole response, tags included
        ('<answer>{"data": [[1, "a"]]}</answer><answer>{"data": [[1, "a"], [2, "b"]]}</answer>', 0.5),  # first span
    ],
)
def test_iou(answer, expected):
    assert iou(T + answer, GOLD_TABLE) == pytest.approx(expected)


def test_iou_first_answer_tag_even_inside_thinking():
    response = '<think><answer>{"data": [[1, "a"]]}</answer></think><answer>' + GOLD_TABLE + "</answer>"
    assert iou(response, GOLD_TABLE) == 0.5


def test_iou_bad_gold_and_deep_json_score_zero():
    assert iou(T + "<answer>" + GOLD_TABLE + "</answer>", "{not json") == 0.0
    deep = "[" * 100_000 + "]" * 100_000
    assert iou(T + '<answer>{"data": ' + deep + "}</answer>", GOLD_TABLE) == 0.0
    assert iou(T + "<answer>" + GOLD_TABLE + "</answer>", '{"data": ' + deep + "}") == 0.0


# ---------------------------------------------------------------- routing


def _spec_type(name: str) -> str:
    """The LongBench-Pro sub-task to metric mapping rule, applied to the task number."""
    group, sub = name.split()[0][1:].split(".")
    if group == "6":
        return {"1": "SubEM", "2": "F1", "3": "Pairwise"}[sub]
    return {
        "1": "NDCG", "2": "Pairwise", "3": "Accuracy", "4": "ROUGE-L", "5": "F1", "7": "F1",
        "8": "SubEM", "9": "F1", "10": "SubEM", "11": "Accuracy",
    }[group]  # fmt: skip


def test_all_25_longbench_pro_sub_tasks_route():
    assert len(LONGBENCH_PRO_TASKS) == 25
    for name in LONGBENCH_PRO_TASKS:
        assert reward_type("longbench_pro", {"reward_mode": name}) == _spec_type(name), name
    assert set(LONGBENCH_PRO_TASKS.values()) == {"NDCG", "Pairwise", "Accuracy", "ROUGE-L", "F1", "SubEM"}


def test_data_source_routes():
    assert REWARD_TYPES == ("EM", "Accuracy", "F1", "Math", "IoU", "SubEM", "NDCG", "Pairwise", "ROUGE-L")
    assert reward_type("EM", None) == "EM"
    assert reward_type("selection", {"reward_mode": "whatever"}) == "Accuracy"
    assert reward_type("math_longcot_math_verify", None) == "Math"
    assert reward_type("dapo_math_longcot_math_verify_v2", None) == "Math"  # substring, as released
    assert reward_type("multitableqa_pretraining", None) == "IoU"
    assert reward_type("longbench_pro", {"reward_mode": "F1_Score"}) == "F1"  # metric-name extension
    assert reward_type("longbench_pro", {"reward_mode": "Summary"}) == "ROUGE-L"


@pytest.mark.parametrize(
    "data_source, extra, fragment",
    [
        ("em", None, "'em'"),
        ("aime_math_longcot_math_verify", None, "aime_math"),
        ("longbench_pro", None, "reward_mode"),
        ("longbench_pro", {"question": "q"}, "reward_mode"),
        ("longbench_pro", {"reward_mode": "T5.1 Full Sentence Citation Alignment"}, "Did you mean"),
        ("longbench_pro", {"reward_mode": "T99"}, "T1.1 Global Cohesive Retrieval"),
    ],
)
def test_unknown_routes_raise_with_a_clear_message(data_source, extra, fragment):
    with pytest.raises(UnknownRouteError) as err:
        compute_score(data_source, "no gate needed", {"doc_ids": ["a"], "golden_label": "a"}, extra)
    assert isinstance(err.value, ValueError)
    assert fragment in str(err.value)


def test_malformed_ground_truth_and_options_raise():
    with pytest.raises(MalformedGroundTruthError, match="golden_label"):
        compute_score("EM", T + "a", "a")
    with pytest.raises(MalformedGroundTruthError, match="doc_ids"):
        compute_score("longbench_pro", T + "a", {"golden_label": "a"}, {"reward_mode": MODE["F1"]})
    with pytest.raises(MalformedGroundTruthError, match="list of strings"):
        compute_score("longbench_pro", T + "a", {"doc_ids": "a"}, {"reward_mode": MODE["F1"]})
    with pytest.raises(RewardInputError, match="unknown reward option"):
        compute_score("EM", T + "a", {"golden_label": "a"}, pairwise_denominatr="gold")


# ---------------------------------------------------------------- rows, TRL, oracle

ROWS = [
    {"data_source": "EM", "reward_model": {"ground_truth": {"doc_ids": [], "golden_label": "K-9", "summary": ""}}},
    {"data_source": "selection", "reward_model": {"ground_truth": {"golden_label": "C"}}},
    {"data_source": "math_longcot_math_verify", "reward_model": {"ground_truth": {"golden_label": "\\frac{7}{18}"}}},
    {"data_source": "multitableqa_pretraining", "reward_model": {"ground_truth": {"golden_label": GOLD_TABLE}}},
] + [
    {
        "data_source": "longbench_pro",
        "reward_model": {"ground_truth": {"doc_ids": ["Alpha one", "Beta", "gamma  three"], "summary": "English"}},
        "extra_info": {"reward_mode": mode, "question": "q"},
    }
    for mode in MODE.values()
]


def test_oracle_scores_top_for_every_type():
    seen = set()
    for row in ROWS:
        kind = rewards.row_reward_type(row)
        seen.add(kind)
        score = score_row(row, oracle_response(row))
        if kind == "ROUGE-L":  # the think tags are one extra word of the whole response
            assert 0.75 < score < 0.999999995  # "alpha one" + 1 extra word: F = 0.8
            assert score_row(row, oracle_response(row), rouge_on_answer=True) == 0.999999995
        else:
            assert score == 1.0, kind
    assert seen == set(REWARD_TYPES)


def test_oracle_ndcg_with_repeated_gold():
    row = {
        "data_source": "longbench_pro",
        "reward_model": {"ground_truth": {"doc_ids": ["a", "b", "a"]}},
        "extra_info": {"reward_mode": MODE["NDCG"]},
    }
    assert score_row(row, oracle_response(row)) == 1.0


def test_trl_reward_func_strings_messages_and_bad_rows():
    rows = ROWS[:2]
    columns = {key: [row.get(key) for row in rows] for key in ("data_source", "reward_model", "extra_info")}
    completions = [oracle_response(row) for row in rows]
    assert rewards.trl_reward_func(prompts=["p", "p"], completions=completions, **columns) == [1.0, 1.0]
    messages = [[{"role": "assistant", "content": c}] for c in completions]
    assert rewards.trl_reward_func(prompts=["p", "p"], completions=messages, trainer_state=None, **columns) == [1.0, 1.0]
    # thinking moved into a separate field by a response parser is put back before </think>
    split = [[{"role": "assistant", "reasoning_content": "hmm", "content": "K-9"}]]
    one = {key: value[:1] for key, value in columns.items()}
    assert rewards.trl_reward_func(prompts=["p"], completions=split, **one) == [1.0]
    bad = {**one, "data_source": ["nope"]}
    assert rewards.trl_reward_func(prompts=["p"], completions=["x</think>K-9"], **bad) == [None]
    assert rewards.make_trl_reward_func(rouge_on_answer=True).__name__ == "golongrl_reward"
