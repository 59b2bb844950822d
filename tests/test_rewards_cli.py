"""`golong rewards score` on a hand-written JSONL in the GoLongRL schema, bad lines included."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from golong.cli import app

ROWS = [
    {  # EM, correct
        "data_source": "EM",
        "prompt": [{"role": "user", "content": "What is the code?"}],
        "ability": "precise retrieval",
        "reward_model": {"style": "rule", "ground_truth": {"doc_ids": [], "golden_label": "K-9", "summary": ""}},
        "extra_info": {"reward_mode": "EM", "question": "What is the code?"},
        "response": "<think>It is K-9.</think>\nK-9",
    },
    {  # EM, wrong case
        "data_source": "EM",
        "prompt": [{"role": "user", "content": "What is the code?"}],
        "ability": "precise retrieval",
        "reward_model": {"style": "rule", "ground_truth": {"doc_ids": [], "golden_label": "K-9", "summary": ""}},
        "extra_info": {"reward_mode": "EM", "question": "What is the code?"},
        "response": "<think>hm</think>k-9",
    },
    {  # F1: P = {a, b, d}, G = {a, b, c} -> 2/3
        "data_source": "longbench_pro",
        "prompt": [{"role": "user", "content": "Which sentences?"}],
        "ability": "exhaustive retrieval",
        "reward_model": {"ground_truth": {"doc_ids": ["a", "b", "c"], "golden_label": "", "summary": "English"}},
        "extra_info": {"reward_mode": "T5.1 Full-Sentence Citation Alignment", "question": "Which sentences?"},
        "response": "<think>x</think>[Answer]\na\nb\nd",
    },
    {  # no response: scored on the oracle with --oracle
        "data_source": "selection",
        "prompt": [{"role": "user", "content": "Pick one."}],
        "ability": "comprehension",
        "reward_model": {"ground_truth": {"doc_ids": [], "golden_label": "C", "summary": ""}},
        "extra_info": {"reward_mode": "selection", "question": "Pick one."},
    },
]
BAD_LINES = [
    "{not json",
    json.dumps({"data_source": "longbench_pro", "reward_model": {"ground_truth": {"doc_ids": ["a"]}},
                "extra_info": {"reward_mode": "T99 Nothing"}, "response": "x</think>a"}),  # fmt: skip
    json.dumps({"data_source": "EM", "response": "x</think>a"}),  # no reward_model
]


def _write(tmp_path, lines):
    src = tmp_path / "responses.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return src


def test_score_file_with_bad_lines_and_oracle(tmp_path):
    src = _write(tmp_path, [json.dumps(r) for r in ROWS[:3]] + BAD_LINES + [json.dumps(ROWS[3])])
    out = tmp_path / "scored.jsonl"
    result = CliRunner().invoke(app, ["rewards", "score", str(src), "-o", str(out), "--oracle"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "row 4: not valid JSON" in result.output
    assert "row 5: unknown longbench_pro reward_mode 'T99 Nothing'" in result.output
    assert "row 6: row has no 'reward_model.ground_truth' field" in result.output
    scored = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["reward_type"], round(r["reward"], 6)) for r in scored] == [
        ("EM", 1.0), ("EM", 0.0), ("F1", round(2 / 3, 6)), ("Accuracy", 1.0),
    ]  # fmt: skip
    assert scored[0]["prompt"] == ROWS[0]["prompt"] and scored[0]["extra_info"] == ROWS[0]["extra_info"]
    assert scored[3]["response"].endswith("The correct answer is (C)")
    # summary table: EM row has 2 rows, mean 0.5, half above zero
    em_line = next(line for line in result.output.splitlines() if line.strip("│ ").startswith("EM"))
    assert "2" in em_line and "0.5000" in em_line and "50.00%" in em_line


def test_missing_response_without_oracle_is_a_bad_line(tmp_path):
    src = _write(tmp_path, [json.dumps(ROWS[3]), json.dumps(ROWS[0])])
    result = CliRunner().invoke(app, ["rewards", "score", str(src)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "row 1: no 'response' field" in result.output
    assert (tmp_path / "responses.scored.jsonl").read_text(encoding="utf-8").count("\n") == 1


def test_exit_nonzero_only_when_nothing_scored(tmp_path):
    src = _write(tmp_path, BAD_LINES)
    result = CliRunner().invoke(app, ["rewards", "score", str(src), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code != 0
    missing = CliRunner().invoke(app, ["rewards", "score", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code != 0 and "no such file" in missing.output


def test_opt_in_fixes_reach_the_scorer(tmp_path):
    row = dict(ROWS[2], extra_info={"reward_mode": "T2.1 Global Timeline Reconstruction"},
               response="<think>x</think>[Answer]\na\nb\nc\nx")  # fmt: skip
    src = _write(tmp_path, [json.dumps(row)])
    for flags, expected in (([], 0.5), (["--pairwise-gold"], 1.0)):
        out = tmp_path / "o.jsonl"
        result = CliRunner().invoke(app, ["rewards", "score", str(src), "-o", str(out), *flags])
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text(encoding="utf-8"))["reward"] == expected


def test_score_parquet_with_oracle_as_the_readme_shows(tmp_path):
    """`golong data synth ... -o X.parquet` then `golong rewards score X.parquet --oracle`: every row 1.0."""
    src = tmp_path / "meetings.parquet"
    runner = CliRunner()
    made = runner.invoke(app, ["data", "synth", "--tasks", "precise_retrieval,exhaustive_retrieval", "--length", "1k",
                               "-n", "3", "-o", str(src)])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["rewards", "score", str(src), "--oracle"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "skipped row" not in result.output
    scored = [json.loads(line) for line in (tmp_path / "meetings.scored.jsonl").read_text().splitlines()]
    assert len(scored) == 6 and all(r["reward"] == 1.0 for r in scored)
    # and a parquet output keeps the rows' nested fields
    out = tmp_path / "scored.parquet"
    result = runner.invoke(app, ["rewards", "score", str(src), "--oracle", "-o", str(out)])
    assert result.exit_code == 0, result.output
    from golong.data import load_rows

    back = load_rows(out)
    assert [r["reward"] for r in back] == [1.0] * 6 and back[0]["prompt"] == scored[0]["prompt"]


def test_validate_and_score_number_the_same_row_alike(tmp_path):
    bad = dict(ROWS[0])
    del bad["reward_model"]
    src = _write(tmp_path, [json.dumps(ROWS[0]), "{not json", json.dumps(bad)])
    runner = CliRunner()
    scored = runner.invoke(app, ["rewards", "score", str(src)], terminal_width=200)
    validated = runner.invoke(app, ["data", "validate", str(src)], terminal_width=200)
    assert "row 2: not valid JSON" in scored.output and "row 3: row has no 'reward_model" in scored.output
    assert "row 2 <row>: not valid JSON" in validated.output and "row 3 reward_model: missing key" in validated.output
