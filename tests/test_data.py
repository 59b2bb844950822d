"""golong.data: loading, saving (parquet / jsonl round trips), validation of hand-written GoLongRL rows,
length statistics."""

from __future__ import annotations

import copy
import json

import pytest

import tasks
from golong import data


def golongrl_row(data_source, gold, *, mode=None, ability="long context", content="Read this. What is it?"):
    """A row written by hand in the released GoLongRL schema (no golong keys)."""
    if isinstance(gold, list):
        gt = {"doc_ids": gold, "golden_label": "\n".join(gold), "summary": "English"}
    else:
        gt = {"doc_ids": [], "golden_label": gold, "summary": ""}
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": content}],
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": gt},
        "extra_info": {"reward_mode": mode or data_source, "question": "What is it?"},
    }


def hand_written_rows() -> list[dict]:
    rows = [
        golongrl_row("EM", "K7Q2"),  # 0 ok
        golongrl_row("longbench_pro", ["[1]", "[4]"], mode="T5.1 Full-Sentence Citation Alignment"),  # 1 ok
        golongrl_row("selection", "B"),  # 2: missing ability (below)
        golongrl_row("EM", "x"),  # 3: prompt of wrong type (below)
        golongrl_row("longbench_pro", ["a"], mode="T99 Invented Task"),  # 4: unknown reward_mode
        golongrl_row("nonsense_source", "x"),  # 5: unknown data_source
        golongrl_row("EM", "x"),  # 6: empty prompt (below)
        golongrl_row("multitableqa_pretraining", "not json"),  # 7: IoU gold is not JSON
        golongrl_row("selection", "The correct answer is (C)"),  # 8 ok
        golongrl_row("longbench_pro", [], mode="T1.1 Global Cohesive Retrieval"),  # 9: NDCG without gold items
        golongrl_row("EM", "x"),  # 10: ground_truth of wrong type (below)
    ]
    del rows[2]["ability"]
    rows[3]["prompt"] = "Read this. What is it?"
    rows[6]["prompt"] = []
    rows[10]["reward_model"]["ground_truth"] = "x"
    return rows


EXPECTED_ISSUES = {
    2: "ability",
    3: "prompt",
    4: "extra_info.reward_mode",
    5: "data_source",
    6: "prompt",
    7: "reward_model.ground_truth.golden_label",
    9: "reward_model.ground_truth.doc_ids",
    10: "reward_model.ground_truth",
}


def test_validate_reports_every_bad_row_with_index_and_field(tmp_path):
    path = tmp_path / "golongrl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in hand_written_rows()))
    rows = data.load_rows(path)
    report = data.validate_rows(rows)
    assert {i.index: i.field for i in report.issues} == EXPECTED_ISSUES
    assert len(report.issues) == len(EXPECTED_ISSUES)
    assert "missing key" in next(i.message for i in report.issues if i.index == 2)
    assert "unknown reward route" in next(i.message for i in report.issues if i.index == 4)
    assert report.counts == {"golongrl-EM": 1, "golongrl-F1": 1, "golongrl-Accuracy": 1}
    assert report.bad_indices == sorted(EXPECTED_ISSUES) and not report.ok
    kept = data.load_rows(path, skip_invalid=True)
    assert kept == [rows[0], rows[1], rows[8]]


def test_generated_rows_validate_and_count_per_task():
    rows = [r for t in tasks.all_tasks() if t.source == "built-in" for r in t.generate(2, 600, seed=5)]
    report = data.validate_rows(rows)
    assert report.ok, [str(i) for i in report.issues]
    assert report.counts == {t.name: 2 for t in tasks.all_tasks() if t.source == "built-in"}


@pytest.mark.parametrize("suffix", ["jsonl", "parquet", "json"])
def test_round_trip_keeps_nested_fields(tmp_path, suffix):
    rows = [r for name in ("multi_table", "graded_ranking", "comprehension") for r in tasks.get_task(name).generate(2, 500)]
    rows += [golongrl_row("EM", "K7Q2")]  # a row without golong's extra_info keys
    path = data.save_rows(rows, tmp_path / f"rows.{suffix}")
    back = data.load_rows(path)
    if suffix == "parquet":
        # parquet stores one schema: keys missing from a row come back as None
        for r in back[-1:]:
            extra = {k: v for k, v in r["extra_info"].items() if v is not None}
            r["extra_info"] = extra
    assert back == rows
    assert back[0]["reward_model"]["ground_truth"]["doc_ids"] == []
    assert isinstance(back[2]["reward_model"]["ground_truth"]["doc_ids"], list)


def test_folder_source_reads_all_files_in_order(tmp_path):
    a = tasks.get_task("precise_retrieval").generate(2, 400)
    b = tasks.get_task("summarization").generate(3, 400)
    data.save_rows(a, tmp_path / "d" / "a.parquet")
    data.save_rows(b, tmp_path / "d" / "sub" / "b.jsonl")
    assert data.load_rows(tmp_path / "d") == a + b


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(data.DataError, match="no such file"):
        data.load_rows(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(data.DataError, match=r"bad.jsonl:2: invalid JSON"):
        data.load_rows(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="holds no"):
        data.load_rows(tmp_path / "empty")
    with pytest.raises(data.DataError, match="cannot write"):
        data.save_rows([{}], tmp_path / "rows.csv")


def test_hub_id_offline_says_hub_unreachable(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(data.DataError, match="hub is unreachable .* pass a local"):
        data.load_rows("Kwai-Klear/GoLongRL")


def test_length_stats_percentiles_by_hand():
    # approximate counter: "ab " counts one token per word, so lengths are 1..10
    rows = []
    for k in range(1, 11):
        r = copy.deepcopy(golongrl_row("EM", "x"))
        r["prompt"][0]["content"] = "ab " * k
        rows.append(r)
    stats = data.length_stats(rows)
    assert stats == {"golongrl-EM": {"count": 10, "p50": 5, "p90": 9, "max": 10}}
    stats = data.length_stats(rows, tokenizer=lambda text: 2 * len(text.split()))
    assert stats["golongrl-EM"]["max"] == 20
