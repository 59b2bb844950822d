"""Crash safety: SIGKILL at a random moment + --resume equals the uninterrupted run; SIGTERM saves and
exits 143; torn or corrupt checkpoints are detected by their manifest and the previous good one used."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from golong import checkpoint
from golong.config import validate_recipe
from golong.trainer import Trainer, train
from tests.test_trainer import pool, recipe, strip_times

STEPS = 5


def cli_recipe(model_dir: Path, out: Path) -> dict:
    """A run of a few seconds: real rewards in a forked process pool, a checkpoint every step."""
    return {
        "model": {"path": str(model_dir)},
        "data": {"sources": [{"generate": ["summarization", "exhaustive_retrieval"], "length": 100, "n": 6}],
                 "max_prompt_tokens": 128},
        "rollout": {"group_size": 2, "prompts_per_step": 2, "max_new_tokens": 6, "batch_size": 8},
        "algo": {"dynamic_sampling": False},
        # Rewards are 0 for a random model; weight decay still moves the weights every step, so the
        # optimizer state and weights must be restored exactly for the sampled lengths to match.
        "optim": {"lr": 1e-2, "weight_decay": 0.5},
        "reward": {"workers": 1},
        "cluster": {"mode": "inline", "torch_threads": 1},
        "trainer": {"steps": STEPS, "output_dir": str(out), "save_every": 1, "keep_checkpoints": 2},
    }


def golong(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # Own session: the kill takes the reward workers too, as a node crash would.
    return subprocess.Popen([sys.executable, "-m", "golong.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def metrics_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip()]


def wait_for_steps(proc: subprocess.Popen, run: Path, n: int, limit_s: float = 120) -> None:
    end = time.monotonic() + limit_s
    while len(metrics_steps(run)) < n and proc.poll() is None:
        assert time.monotonic() < end, "the training subprocess made no progress"
        time.sleep(0.02)


def finish(proc: subprocess.Popen, limit_s: float = 180) -> tuple[int, str]:
    _, err = proc.communicate(timeout=limit_s)
    return proc.returncode, err


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """The recipe file and the metrics of the uninterrupted run (computed in this process)."""
    root = tmp_path_factory.mktemp("crash")
    raw = cli_recipe(tiny_model_dir, root / "straight")
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    straight = train(validate_recipe(raw), quiet=True)
    assert [h["step"] for h in straight] == list(range(1, STEPS + 1))
    step_s = sum(h["step_time"] for h in straight) / len(straight)
    return path, strip_times(straight), step_s


def resume_and_compare(path: Path, run: Path, straight: list[dict]) -> None:
    rc, err = finish(golong("train", str(path), f"trainer.output_dir={run}", "--resume", str(run)))
    assert rc == 0, err[-2000:]
    steps = metrics_steps(run)
    assert steps == list(range(1, STEPS + 1)), f"steps lost or repeated: {steps}"
    resumed = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert strip_times(resumed) == straight


def kill_at_random_and_resume(setup, tmp_path, seed: int) -> None:
    path, straight, step_s = setup
    rng = random.Random(seed)
    run = tmp_path / f"run{seed}"
    proc = golong("train", str(path), f"trainer.output_dir={run}")
    wait_for_steps(proc, run, rng.randint(1, STEPS - 1))
    time.sleep(rng.uniform(0.0, step_s))  # anywhere in the next step, its checkpoint save included
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    done = metrics_steps(run)
    assert done == list(range(1, len(done) + 1))  # may be all STEPS, killed while saving the last
    resume_and_compare(path, run, straight)


def test_sigkill_then_resume_equals_the_uninterrupted_run(setup, tmp_path):
    kill_at_random_and_resume(setup, tmp_path, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_then_resume_equals_the_uninterrupted_run_more_seeds(setup, tmp_path, seed):
    kill_at_random_and_resume(setup, tmp_path, seed)


def test_sigterm_finishes_the_step_saves_and_exits_143(setup, tmp_path):
    path, _, _ = setup
    run = tmp_path / "term"
    proc = golong("train", str(path), f"trainer.output_dir={run}")
    wait_for_steps(proc, run, 1)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc)
    assert rc == 143, err[-2000:]
    assert "stopped by SIGTERM" in err
    done = metrics_steps(run)
    assert 1 <= len(done) < STEPS  # stopped early, after a whole step
    assert checkpoint.latest(run).name == f"step_{done[-1]:06d}"  # the step it stopped after is saved


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_then_resume_equals_the_uninterrupted_run(setup, tmp_path, sig, code):
    path, straight, _ = setup
    run = tmp_path / "stop"
    proc = golong("train", str(path), f"trainer.output_dir={run}")
    wait_for_steps(proc, run, 2)
    # To the whole group, as Ctrl-C in a terminal or Slurm do: reward workers ignore SIGINT; SIGTERM
    # kills them, and the step's lost chunks are rescored in a fresh pool.
    os.killpg(proc.pid, sig)
    rc, err = finish(proc)
    assert rc == code, err[-2000:]
    assert len(metrics_steps(run)) < STEPS
    resume_and_compare(path, run, straight)


@pytest.mark.slow
@pytest.mark.ray
def test_sigterm_to_the_group_in_ray_mode_saves_the_step(tiny_model_dir, tmp_path):
    """`timeout` and `kill -- -PGID` signal every process of the group: the local Ray cluster must outlive
    the signal long enough for the driver to finish the step and save through the learner actor."""
    pytest.importorskip("ray")
    run = tmp_path / "ray"
    raw = cli_recipe(tiny_model_dir, run)
    raw["cluster"] = {"mode": "ray", "torch_threads": 1, "learner_cpus": 1, "rollout_cpus": 1}
    raw["trainer"]["steps"] = 50
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = golong("train", str(path))
    wait_for_steps(proc, run, 2, limit_s=240)
    os.killpg(proc.pid, signal.SIGTERM)
    rc, err = finish(proc)
    assert rc == 143, err[-2000:]
    done = metrics_steps(run)
    assert done == list(range(1, len(done) + 1)) and len(done) < 50
    assert checkpoint.latest(run).name == f"step_{done[-1]:06d}"  # the step it stopped after is saved


# -- checkpoint integrity ------------------------------------------------------------------------
def fake_learner(payload: bytes):
    def save(path: Path) -> None:
        (path / "model").mkdir(parents=True)
        (path / "model" / "weights.bin").write_bytes(payload)
    return save


def test_manifest_detects_truncated_flipped_and_missing_files(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, fake_learner(bytes(range(200)) * step), {"metrics": []}, keep=3)
    ckpts = checkpoint.list_checkpoints(tmp_path)
    for c in ckpts:
        checkpoint.verify(c)
    files = json.loads((ckpts[0] / "manifest.json").read_text())["files"]
    assert set(files) == {"learner/model/weights.bin", "state.pt"}

    weights = ckpts[2] / "learner" / "model" / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:100])  # torn
    with pytest.raises(checkpoint.CorruptCheckpoint, match="expected 600"):
        checkpoint.verify(ckpts[2])
    data = bytearray((ckpts[1] / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one bit pattern changed
    (ckpts[1] / "state.pt").write_bytes(bytes(data))
    with pytest.raises(checkpoint.CorruptCheckpoint, match="sha256"):
        checkpoint.verify(ckpts[1])
    warnings: list[str] = []
    assert checkpoint.latest(tmp_path, warn=warnings.append) == ckpts[0]
    assert len(warnings) == 2 and "step_000003" in warnings[0] and "step_000002" in warnings[1]

    (ckpts[0] / "manifest.json").unlink()
    with pytest.raises(checkpoint.CorruptCheckpoint, match="every checkpoint fails"):
        checkpoint.latest(tmp_path)


def test_a_leftover_temporary_folder_is_never_a_checkpoint(tmp_path):
    checkpoint.save(tmp_path, 1, fake_learner(b"ok"), {"metrics": []})
    torn = tmp_path / "checkpoints" / ".step_000002.tmp-99999"  # a process killed mid-save
    (torn / "learner").mkdir(parents=True)
    assert checkpoint.list_checkpoints(tmp_path) == [tmp_path / "checkpoints" / "step_000001"]
    checkpoint.save(tmp_path, 2, fake_learner(b"ok"), {"metrics": []})
    assert not torn.exists()  # cleaned up by the next save


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    (tmp_path / "recipe.yaml").write_text("{}")  # the trainer writes it at start-up
    warnings: list[str] = []
    assert checkpoint.resume_point(tmp_path, warn=warnings.append) is None
    assert "starting again from step 0" in warnings[0]
    with pytest.raises(checkpoint.RecipeError, match="no such run folder"):
        checkpoint.resume_point(tmp_path / "typo")  # no such folder
    (tmp_path / "other").mkdir()
    with pytest.raises(checkpoint.RecipeError, match="nothing to resume"):
        checkpoint.resume_point(tmp_path / "other")  # not a run folder


def test_state_files_load_with_weights_only(tmp_path):
    import numpy as np
    import torch

    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    ckpt = checkpoint.save(tmp_path, 1, fake_learner(b"x"), {"metrics": [{"step": 1, "loss": 0.5}]})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    state = checkpoint.load_state(ckpt)  # weights_only=True: fails on any pickled object
    checkpoint.set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert state["metrics"] == [{"step": 1, "loss": 0.5}]


def test_resume_skips_a_corrupt_latest_checkpoint_and_truncates_metrics(tiny_model_dir, tmp_path, capsys):
    r = recipe(tiny_model_dir, tmp_path / "c", trainer__steps=2, trainer__save_every=1)
    first = train(r, rewards=pool(), quiet=True)
    weights = next((tmp_path / "c" / "checkpoints" / "step_000002" / "learner" / "model").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-64])
    t = Trainer(r, resume=tmp_path / "c", rewards=pool(), quiet=True)
    assert t.step == 1
    assert "skipping checkpoint step_000002" in capsys.readouterr().err
    assert metrics_steps(tmp_path / "c") == [1]  # the lost step 2 is no longer in metrics.jsonl
    again = t.run()
    assert strip_times(again) == strip_times(first)
    assert metrics_steps(tmp_path / "c") == [1, 2]
