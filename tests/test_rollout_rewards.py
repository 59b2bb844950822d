"""The reward pool: real GoLongRL scores, failures and timeouts scored 0 with a status, never a crash."""

from __future__ import annotations

import time

import pytest

import rewards
import tasks
from golong.rewarding import RewardPool, score_chunk


def slow_score(row, response, **variant):
    time.sleep(30)
    return 1.0


def nan_score(row, response, **variant):
    return float("nan")


@pytest.fixture(scope="module")
def rows():
    return [t.generate(1, 120, seed=3)[0] for t in tasks.all_tasks()]


@pytest.fixture(scope="module")
def pool():
    p = RewardPool(workers=2, timeout_s=5.0, mode="process")
    p.start()
    yield p
    p.close()


def test_pool_scores_equal_direct_scoring(pool, rows):
    responses = [rewards.oracle_response(r) for r in rows] + ["no think block at all"] * len(rows)
    got = pool.score(rows + rows, responses)
    expected = [rewards.score_row(r, x) for r, x in zip(rows + rows, responses, strict=True)]
    assert [g.score for g in got] == expected
    assert all(g.status == "ok" for g in got)
    assert min(expected[: len(rows)]) > 0.9 and max(expected[len(rows) :]) == 0.0


def test_a_reward_that_raises_scores_zero_and_is_reported(pool, rows):
    bad = {**rows[0], "data_source": "no_such_source"}
    got = pool.score([rows[0], bad], [rewards.oracle_response(rows[0])] * 2)
    assert got[0].score == 1.0 and got[0].status == "ok"
    assert got[1].score == 0.0 and got[1].status == "error" and "no_such_source" in got[1].message


def test_a_reward_past_its_time_limit_scores_zero_as_a_timeout(rows):
    p = RewardPool(workers=1, timeout_s=0.3, mode="process", score_fn="tests.test_rollout_rewards:slow_score")
    try:
        t0 = time.perf_counter()
        got = p.score(rows[:2], ["x", "y"])
        assert time.perf_counter() - t0 < 10  # the alarm stops each call at 0.3 s, not 30 s
    finally:
        p.close()
    assert [g.status for g in got] == ["timeout", "timeout"] and [g.score for g in got] == [0.0, 0.0]


def test_thread_mode_and_non_finite_scores(rows):
    got = score_chunk(nan_score, [(rows[0], "x")], {}, 1.0)
    assert got[0].score == 0.0 and got[0].status == "error"
    p = RewardPool(mode="thread", score_fn="no.such.module:fn")
    assert p.score(rows[:1], ["x"])[0].status == "error"
