"""`golong data validate|inspect|synth` and `golong tasks list` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import rewards
import tasks
from golong import data
from golong.cli import app
from tests.test_data import EXPECTED_ISSUES, hand_written_rows
from tests.test_tasks import PLUGIN

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_task.py"


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_tasks_list_shows_builtins_and_plugins():
    result = run("tasks", "list", "--task-file", f"{EXAMPLE}:MeetingAttendance")
    assert result.exit_code == 0, result.output
    for t in tasks.all_tasks():
        if t.source == "built-in":
            assert t.name in result.output
    assert "meeting_attendance" in result.output and "plug-in" in result.output
    assert "ROUGE-L" in result.output and "built-in" in result.output


def test_synth_then_validate_then_inspect(tmp_path, tiny_tokenizer):
    out = tmp_path / "rows.jsonl"
    result = run("data", "synth", "--tasks", "precise_retrieval,summarization", "--length", "2k", "-n", "3",
                 "--seed", "4", "--split", "heldout", "-o", out)
    assert result.exit_code == 0, result.output
    rows = data.load_rows(out)
    assert [r["extra_info"]["task"] for r in rows] == ["precise_retrieval"] * 3 + ["summarization"] * 3
    assert all(r["extra_info"]["split"] == "heldout" and abs(r["extra_info"]["prompt_tokens"] - 2048) < 205 for r in rows)
    assert rows == tasks.get_task("precise_retrieval").generate(3, 2048, seed=4, split="heldout") + tasks.get_task(
        "summarization"
    ).generate(3, 2048, seed=4, split="heldout")
    for r in rows:
        assert tasks.task_for_row(r).score(r, rewards.oracle_response(r)) >= 0.99

    result = run("data", "validate", out)
    assert result.exit_code == 0, result.output
    assert "precise_retrieval" in result.output and "summarization" in result.output

    result = run("data", "inspect", out)
    assert result.exit_code == 0, result.output
    assert "p50" in result.output and "summarization" in result.output

    # a real tokenizer folder: lengths are exact token counts of that tokenizer
    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(tok_dir)
    out2 = tmp_path / "rows.parquet"
    result = run("data", "synth", "--tasks", "graded_ranking", "--length", "1500", "-n", "2",
                 "--tokenizer", tok_dir, "-o", out2)
    assert result.exit_code == 0, result.output
    result = run("data", "inspect", out2, "--tokenizer", tok_dir)
    assert result.exit_code == 0, result.output
    lens = [r["extra_info"]["prompt_tokens"] for r in data.load_rows(out2)]
    assert str(max(lens)) in result.output


def test_synth_with_a_plugin_task_file(tmp_path):
    plugin = tmp_path / "colour.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "colour.jsonl"
    result = run("data", "synth", "--task-file", f"{plugin}:ColourCode", "--length", "1k", "-n", "4", "-o", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and {r["extra_info"]["task"] for r in rows} == {"colour_code"}


def test_validate_bad_file_lists_rows_and_fails(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in hand_written_rows()))
    result = run("data", "validate", path)
    assert result.exit_code == 1
    for index, field in EXPECTED_ISSUES.items():  # rows numbered from 1, as `rewards score` numbers them
        assert f"row {index + 1} {field}:" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "validate", "missing.jsonl"], "no such file"),
        (["data", "synth", "--tasks", "nope", "-o", "x.jsonl"], "known tasks:"),
        (["data", "synth", "--length", "lots", "-o", "x.jsonl"], "cannot parse length"),
        (["data", "synth", "--split", "test", "-o", "x.jsonl"], "unknown split"),
        (["data", "synth", "--task-file", "none.py:X", "-o", "x.jsonl"], "not an existing .py file"),
        (["data", "synth", "--tasks", "comprehension", "-n", "1", "-o", "x.csv"], "cannot write"),
    ],
)
def test_user_errors_are_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(*args)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
