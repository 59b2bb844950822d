"""Hostile data rows and recipes: one-line errors naming row index and field (or key), or a counted
skip with data.skip_invalid / --skip-invalid; never a traceback mid-run."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

import tasks
from golong import data
from golong.cli import app
from golong.config import RecipeError, load_recipe, validate_recipe

BASE = {"model": {"path": "m"}, "data": {"sources": [{"generate": "all"}]}}


def hostile_rows() -> tuple[list, list[tuple[int, str]]]:
    """Valid generated rows with malformed ones mixed in; returns rows and the expected (index, field)."""
    good = [t.generate(1, 100, seed=1)[0] for t in tasks.all_tasks()[:2]] * 2
    bad = [
        ({k: v for k, v in good[0].items() if k != "prompt"}, "prompt"),              # missing key
        ({**good[0], "prompt": "just a string"}, "prompt"),                           # wrong type
        ({**good[0], "prompt": []}, "prompt"),                                        # empty prompt
        ({**good[0], "prompt": [{"role": "user", "content": "  "}]}, "prompt"),      # blank prompt
        ({**good[0], "prompt": [{"role": "user", "content": 7}]}, "prompt[0].content"),
        ({**good[0], "data_source": "no_such_task"}, "data_source"),                  # unknown task
        ({**good[0], "ability": 3}, "ability"),
        ({**good[0], "reward_model": "EM"}, "reward_model.ground_truth"),
        ({**good[0], "extra_info": [1, 2]}, "extra_info"),
        ([1, 2, 3], "<row>"),                                                         # not a dict
    ]
    rows, expected = list(good), []
    for row, where in bad:
        expected.append((len(rows), where))
        rows.append(row)
    return rows, expected


def test_every_malformed_row_is_named_by_index_and_field(tmp_path):
    rows, expected = hostile_rows()
    report = data.validate_rows(rows)
    got = {(i.index, i.field) for i in report.issues}
    assert set(expected) <= got and {i for i, _ in got} == {i for i, _ in expected}
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(data.DataError) as e:
        data.load_rows(path, skip_invalid=False)
    first_index, first_field = expected[0]
    message = str(e.value)
    assert "\n" not in message and f"10 of {len(rows)} rows are invalid" in message
    assert f"row {first_index + 1}: {first_field}" in message and "--skip-invalid" in message
    kept = data.load_rows(path, skip_invalid=True)
    assert kept == rows[:4]


def write_recipe(tmp_path, model_dir, rows_path, out):
    raw = {
        "model": {"path": str(model_dir)},
        "data": {"sources": [{"path": str(rows_path)}], "max_prompt_tokens": 128},
        "rollout": {"group_size": 2, "prompts_per_step": 2, "max_new_tokens": 4},
        "algo": {"dynamic_sampling": False},
        "reward": {"workers": 1},
        "cluster": {"mode": "inline"},
        "trainer": {"steps": 1, "output_dir": str(out)},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_train_on_malformed_rows_fails_in_one_line_or_skips_and_counts(tiny_model_dir, tmp_path):
    rows, expected = hostile_rows()
    rows_path = tmp_path / "rows.jsonl"
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_recipe(tmp_path, tiny_model_dir, rows_path, tmp_path / "out")
    runner = CliRunner()
    res = runner.invoke(app, ["train", path])
    assert res.exit_code == 1, res.output
    last = [x for x in res.output.splitlines() if x.strip()][-1]
    assert last.startswith("error: ") and f"row {expected[0][0] + 1}: prompt" in last and "Traceback" not in res.output
    res = runner.invoke(app, ["train", path, "--skip-invalid"])
    assert res.exit_code == 0, res.output
    assert f"skipped 10 invalid rows of {len(rows)}" in res.output
    logged = json.loads((tmp_path / "out" / "metrics.jsonl").read_text())
    assert logged["step"] == 1 and logged["skipped_invalid_rows"] == 10  # the count is in the metrics too


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**BASE, "rollout": {"group_size": "eight"}}, "rollout.group_size"),          # wrong type
        ({**BASE, "optim": {"lr": "fast"}}, "optim.lr"),
        ({**BASE, "trainer": {"steps": [3]}}, "trainer.steps"),
        ({**BASE, "reward": {"workers": True, "timeout_s": "x"}}, "reward.timeout_s"),
        ({**BASE, "optim": {"lr": -1e-6}}, "optim.lr"),                               # negative numbers
        ({**BASE, "reward": {"timeout_s": -5}}, "reward.timeout_s"),
        ({**BASE, "trainer": {"steps": -3}}, "trainer.steps"),
        ({**BASE, "data": {"sources": [{"generate": "all", "n": -1}]}}, "data.sources.0.n"),
        ({**BASE, "zebra": {"a": 1}}, "zebra"),                                       # unknown section
        ({**BASE, "rollout": 5}, "rollout"),                                          # section not a mapping
        ({**BASE, "data": {"sources": "x.jsonl"}}, "data.sources"),
    ],
)
def test_invalid_recipes_give_one_line_errors_naming_the_key(raw, message):
    with pytest.raises(RecipeError) as e:
        validate_recipe(raw)
    assert message in str(e.value) and "\n" not in str(e.value).strip()


@pytest.mark.parametrize("text", ["- just\n- a list\n", "42\n", "model: {path: m}\ndata: {sources: [{generate: all}]}\n\t- tab"])
def test_recipe_files_that_are_not_mappings_are_one_line_errors(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert "\n" not in str(e.value).strip()
