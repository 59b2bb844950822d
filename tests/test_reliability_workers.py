"""Worker faults: a hanging reward scores 0 in time and is counted per reward type; a reward worker killed
mid-batch (process pool or Ray task) costs only its own responses, scored 0, and the run goes on."""

from __future__ import annotations

import os
import signal
import time

import pytest

import rewards
import tasks
from golong.rewarding import RewardPool
from golong.trainer import Trainer
from tests.test_trainer import recipe


def hang(row, response, **variant):
    time.sleep(60)
    return 1.0


def hang_on_em(row, response, **variant):
    """Hangs for EM rows only; any other row scores 0.25."""
    if rewards.reward_type(row["data_source"], row.get("extra_info")) == "EM":
        time.sleep(60)
    return 0.25


def deaf_hang(row, response, **variant):
    """Ignores the per-call alarm: only the pool's backstop deadline can stop it."""
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(60)
    return 1.0


def die_on_marker(row, response, **variant):
    """Kills the worker process that scores a response containing DIE (as the OOM killer would)."""
    if "DIE" in response:
        os.kill(os.getpid(), signal.SIGKILL)
    return float(len(response) % 2)


@pytest.fixture(scope="module")
def rows():
    return [t.generate(1, 120, seed=4)[0] for t in tasks.all_tasks()][:4]


def test_a_hanging_reward_in_thread_mode_scores_zero_in_time(rows):
    p = RewardPool(mode="thread", timeout_s=0.2, score_fn=hang)
    t0 = time.perf_counter()
    got = p.score(rows[:2], ["a", "b"])
    assert time.perf_counter() - t0 < 2.0
    assert [(g.score, g.status) for g in got] == [(0.0, "timeout"), (0.0, "timeout")]


def test_hanging_rewards_are_counted_per_reward_type_by_the_trainer(tiny_model_dir, tmp_path):
    r = recipe(tiny_model_dir, tmp_path / "hang", trainer__steps=1)
    pool = RewardPool(mode="thread", timeout_s=0.1, score_fn=hang_on_em)
    t = Trainer(r, rewards=pool, quiet=True)
    t0 = time.perf_counter()
    (h,) = t.run()
    assert time.perf_counter() - t0 < 30
    n_other = round(h["reward/all"] * 6 / 0.25)  # 6 responses: EM ones score 0, the others 0.25
    n_em = 6 - n_other
    assert h["reward_timeouts/all"] == n_em and h["reward_errors/all"] == 0
    if n_em:
        assert h["reward_timeouts/EM"] == n_em and h["reward/EM"] == 0.0
    if n_other:
        assert h["reward_timeouts/Accuracy"] == 0.0 and h["reward/Accuracy"] == 0.25


def test_a_killed_process_worker_costs_only_its_responses(rows):
    p = RewardPool(workers=2, timeout_s=1.0, mode="process", score_fn="tests.test_reliability_workers:die_on_marker")
    try:
        p.score(rows[:2], ["warm", "up"])  # workers started: the backstop needs no start-up grace
        t0 = time.perf_counter()
        got = p.score(rows, ["ab", "DIE", "abc", "a"])
        took = time.perf_counter() - t0
        assert took < 15  # the batch deadline: 1 s x 2 items per worker + 5 s
        assert [g.score for g in got] == [0.0, 0.0, 1.0, 1.0]
        assert [g.status for g in got] == ["ok", "timeout", "ok", "ok"]
        assert "died" in got[1].message
        again = p.score(rows[:2], ["x", "yy"])  # the pool was restarted: the run goes on
        assert [(g.score, g.status) for g in again] == [(1.0, "ok"), (0.0, "ok")]
    finally:
        p.close()


def test_a_worker_killed_while_the_pool_is_idle_does_not_stop_the_next_score(rows):
    """SIGTERM to the process group kills idle workers between steps; the next step starts a fresh pool."""
    p = RewardPool(workers=2, timeout_s=1.0, mode="process", score_fn="tests.test_reliability_workers:die_on_marker")
    try:
        p.score(rows[:2], ["warm", "up"])
        victim = next(iter(p._pool._processes.values()))
        victim.kill()
        victim.join(5)
        deadline = time.monotonic() + 5  # the executor notices the death on its own thread
        while not p._pool._broken and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p._pool._broken
        got = p.score(rows[:2], ["x", "yy"])
        assert [(g.score, g.status) for g in got] == [(1.0, "ok"), (0.0, "ok")]
    finally:
        p.close()


@pytest.mark.slow
def test_a_reward_that_ignores_its_alarm_is_stopped_by_the_backstop(rows):
    p = RewardPool(workers=1, timeout_s=0.5, mode="process", score_fn="tests.test_reliability_workers:deaf_hang")
    try:
        p.start()
        p._warm = True  # the workers are forked already; keep the test to the 5 s backstop
        t0 = time.perf_counter()
        got = p.score(rows[:1], ["x"])
        assert time.perf_counter() - t0 < 10
        assert (got[0].score, got[0].status) == (0.0, "timeout")
    finally:
        p.close()


@pytest.mark.ray
def test_a_ray_reward_task_whose_worker_dies_scores_zero(ray_session, rows):
    from ray import cloudpickle

    import tests.test_reliability_workers as here

    cloudpickle.register_pickle_by_value(here)  # Ray workers need not import the tests package
    try:
        p = RewardPool(workers=2, timeout_s=5.0, mode="ray", score_fn=die_on_marker, ray_num_cpus=0.5)
        got = p.score(rows, ["ab", "DIE", "abc", "a"])
    finally:
        cloudpickle.unregister_pickle_by_value(here)
    assert [g.score for g in got] == [0.0, 0.0, 1.0, 1.0]
    assert [g.status for g in got] == ["ok", "timeout", "ok", "ok"]
