"""Run folders through the CLI: --resume continues the recorded recipe (overrides applied and recorded),
a folder holding another run is refused, Ctrl-C in the warm start leaves a checkpoint that the printed
command resumes, and a run ends with a summary table (also shown by `golong plot`)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from golong import checkpoint
from golong.cli import app
from tests.test_trainer import recipe

runner = CliRunner()


def write_recipe(tmp_path: Path, model_dir, out: Path, **over) -> str:
    raw = recipe(model_dir, out, **over).model_dump(mode="json")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def steps_logged(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def test_resume_continues_the_recorded_recipe_and_records_overrides(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    path = write_recipe(tmp_path, tiny_model_dir, run, trainer__steps=4)
    res = runner.invoke(app, ["train", path, "trainer.steps=2", "rollout.max_new_tokens=5"])
    assert res.exit_code == 0, res.output
    assert steps_logged(run) == [1, 2]
    # no recipe file: the recorded one (steps 2, max_new_tokens 5) plus the new override
    res = runner.invoke(app, ["train", "--resume", str(run), "trainer.steps=3"])
    assert res.exit_code == 0, res.output
    assert steps_logged(run) == [1, 2, 3]
    recorded = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recorded["trainer"]["steps"] == 3 and recorded["rollout"]["max_new_tokens"] == 5
    history = json.loads((run / "run.json").read_text())["history"]
    assert [h["action"] for h in history] == ["start", "resume"] and history[1]["overrides"] == ["trainer.steps=3"]
    # a recipe file given as well is not used: the run's recorded recipe wins, and the user is told
    res = runner.invoke(app, ["train", path, "--resume", str(run), "trainer.steps=4"])
    assert res.exit_code == 0, res.output
    assert "differs from the recipe recorded" in res.output and "rollout.max_new_tokens" in res.output
    assert steps_logged(run) == [1, 2, 3, 4]
    assert yaml.safe_load((run / "recipe.yaml").read_text())["rollout"]["max_new_tokens"] == 5


def test_a_folder_holding_another_run_is_refused(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    path = write_recipe(tmp_path, tiny_model_dir, run, trainer__steps=1)
    assert runner.invoke(app, ["train", path]).exit_code == 0
    before = (run / "metrics.jsonl").read_text(), (run / "recipe.yaml").read_text()
    res = runner.invoke(app, ["train", path, "rollout.group_size=3"])
    assert res.exit_code == 1
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "already holds a run" in lines[0] and f"--resume {run}" in lines[0]
    assert ((run / "metrics.jsonl").read_text(), (run / "recipe.yaml").read_text()) == before
    # a checkpoint copied in from another run is refused on resume
    other = tmp_path / "other"
    assert runner.invoke(app, ["train", path, f"trainer.output_dir={other}"]).exit_code == 0
    (run / "checkpoints" / "step_000001").rename(run / "checkpoints" / "mine")
    (other / "checkpoints" / "step_000001").rename(run / "checkpoints" / "step_000001")
    res = runner.invoke(app, ["train", "--resume", str(run), "trainer.steps=2"])
    assert res.exit_code == 1 and "belongs to run" in res.output
    # --overwrite starts over
    res = runner.invoke(app, ["train", path, "rollout.group_size=3", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((run / "recipe.yaml").read_text())["rollout"]["group_size"] == 3


def test_ctrl_c_in_the_warm_start_saves_and_the_printed_command_resumes_it(tiny_model_dir, tmp_path):
    run = tmp_path / "warm"
    path = write_recipe(tmp_path, tiny_model_dir, run, trainer__steps=1, trainer__warm_start_steps=40,
                        trainer__warm_start_prompts=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "golong.cli", "train", path], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = ""
    end = time.monotonic() + 120
    while "warm start 2/40" not in seen:
        assert time.monotonic() < end and proc.poll() is None, seen[-2000:]
        seen += proc.stderr.readline()
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped by SIGINT after warm-start step" in err
    command = next(line for line in out.splitlines() if "resume with: " in line).split("resume with: ")[1]
    state = checkpoint.load_state(checkpoint.latest(run))
    assert state["step"] == 0 and 2 <= state["warm_done"] < 40 and len(state["warm_logs"]) == state["warm_done"]
    # the printed command, verbatim (finishing 38 more warm-start steps would be slow: one fewer is asked for)
    args = shlex.split(command)
    assert args[:3] == ["golong", "train", "--resume"]
    res = subprocess.run([sys.executable, "-m", "golong.cli", *args[1:],
                          f"trainer.warm_start_steps={state['warm_done'] + 1}"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"warm-start step {state['warm_done']}/" in res.stderr
    assert f"warm start {state['warm_done'] + 1}/{state['warm_done'] + 1}" in res.stderr
    assert "warm start 1/" not in res.stderr  # continued, not started over
    assert steps_logged(run) == [1]
    assert "warm start: " in res.stdout and "next:" in res.stdout


def test_a_run_ends_with_a_summary_and_plot_shows_it(tiny_model_dir, tmp_path):
    run = tmp_path / "sum"
    path = write_recipe(tmp_path, tiny_model_dir, run, trainer__steps=3)
    res = runner.invoke(app, ["train", path], terminal_width=200)
    assert res.exit_code == 0, res.output
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    table = res.output[res.output.index("start → end"):]
    all_row = next(line for line in table.splitlines() if "all tasks" in line)
    steps, first, _, last, _, scored, errors = all_row.split()[2:]
    assert steps == "3" and first == f"{history[0]['reward/all']:.3f}" and last == f"{history[-1]['reward/all']:.3f}"
    assert scored == str(int(sum(h["responses/all"] for h in history))) and errors == "0"
    labels = json.loads((run / "run.json").read_text())["tasks"]
    assert all(name in table for name in labels.values())  # rows named by task, as eval names them
    assert f"checkpoint: {run / 'checkpoints' / 'step_000003'}" in res.output
    assert f"golong eval --model {tiny_model_dir} --model {run}" in res.output and f"golong plot {run}" in res.output
    from golong.plot import legend_names

    assert legend_names(run, {"EM", "Accuracy"}) == {"EM": "precise_retrieval (EM)", "Accuracy": "comprehension (Accuracy)"}
    plotted = runner.invoke(app, ["plot", str(run)], terminal_width=200)
    assert plotted.exit_code == 0 and all_row in plotted.output


def test_a_folder_another_process_trains_in_is_refused(tiny_model_dir, tmp_path):
    run = tmp_path / "busy"
    path = write_recipe(tmp_path, tiny_model_dir, run, trainer__steps=1)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from golong.runs import lock; "
                               f"h = lock({str(run)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = runner.invoke(app, ["train", path])
        assert res.exit_code == 1 and "in use by another golong process" in res.output
    finally:
        holder.kill()
        holder.wait()
    assert runner.invoke(app, ["train", path]).exit_code == 0


def test_the_summary_table_fits_80_columns():
    import io

    from rich.console import Console

    from golong.summary import summarize, summary_table

    labels = {"EM": "precise_retrieval", "F1": "exhaustive_retrieval", "NDCG": "graded_ranking"}
    history = [{"step": s, **{f"{m}/{t}": 0.25 * (s % 4) for t in [*labels, "all"]
                              for m in ("reward", "pass_rate", "responses", "reward_errors")}} for s in range(1, 31)]
    out = io.StringIO()
    Console(file=out, width=80).print(summary_table(summarize(history, labels), "a title"))
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in out.getvalue()
    row = next(line for line in lines if line.startswith("exhaustive_retrieval")).split()
    # 3 steps at the start (steps 1-3: 0.25, 0.5, 0.75) and 3 at the end (28-30: 0, 0.25, 0.5)
    assert row == ["exhaustive_retrieval", "F1", "30", "0.500", "→", "0.250", "25%", "11", "11"]  # sums of 0.25 * (s % 4)
