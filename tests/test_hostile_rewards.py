"""Adversarial responses through every reward: never an exception, always a score in [0, 1], bounded
time (p99 per call printed); oversized responses are refused by the pool's size guard in bounded time."""

from __future__ import annotations

import random
import time

import pytest

from golong.rewarding import MAX_RESPONSE_CHARS, RewardPool
from rewards import compute_score
from tests.test_rewards_fuzz import MATH, ROUTES

MARKERS = ["<think>", "</think>", "[Answer]", "[答案]", "<answer>", "</answer>", "\\boxed{", "}", "{", "[", "]",
           '{"data": ', "(A)", "The correct answer is", "\n", "\x00", "\ufeff", "\u202e", "𝔘𝔫𝔦", "ﷺ", "\r"]


def _unicode(rng: random.Random, n: int) -> str:
    planes = [(0x20, 0x7E), (0xA0, 0x2FF), (0x4E00, 0x9FFF), (0x0600, 0x06FF), (0x1F300, 0x1FAFF),
              (0x0300, 0x036F), (0xE000, 0xF8FF), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(planes)
        c = rng.randint(lo, hi)
        out.append(chr(c if not 0xD800 <= c <= 0xDFFF else 0x41))
    return "".join(out)


def adversarial(rng: random.Random) -> str:
    """One hostile response; the size classes keep a 500-response run near ten seconds."""
    big = rng.random() < 0.02  # a few responses of 100K-400K characters
    kind = rng.randrange(9)
    if kind == 0:
        body = _unicode(rng, rng.randint(0, 80_000 if big else 400))
    elif kind == 1:
        body = "".join(rng.choice(MARKERS) + _unicode(rng, rng.randint(0, 3)) for _ in range(rng.randint(1, 40_000 if big else 300)))
    elif kind == 2:
        depth = rng.randint(1, 100_000)
        body = '<answer>{"data": ' + "[" * depth + ("]" * depth if rng.random() < 0.5 else "") + "}</answer>"
    elif kind == 3:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 100_000 if big else 2_000)))
        body = rng.choice(["\\boxed{%s}", "[Answer] %s", "%s", "\\boxed{%s/7}", "\\boxed{1e%s}"]) % digits
    elif kind == 4:
        depth = rng.randint(1, 5_000)
        body = "\\boxed{" + "\\frac{1}{" * depth + "2" + "}" * depth + "}"
    elif kind == 5:
        body = "[Answer] " + ", ".join(_unicode(rng, rng.randint(0, 6)) for _ in range(rng.randint(0, 20_000 if big else 200)))
    elif kind == 6:
        body = "(" * rng.randint(1, 50_000) + "A"
    elif kind == 7:
        body = " ".join(rng.choice(["a", "b.", "the", "答案", "。"]) for _ in range(rng.randint(0, 150_000 if big else 1_000)))
    else:
        body = _unicode(rng, rng.randint(0, 50))
    wrap = rng.choice(["{}", "<think>x</think>{}", "{}</think>", "<think>{}", "<think></think>\n{}"])
    return wrap.format(body)


def fuzz(n: int, seed: int) -> dict[str, list[float]]:
    """Score n responses through every route; return per-route call times (asserting every score)."""
    rng = random.Random(seed)
    times: dict[str, list[float]] = {}
    for _ in range(n):
        response = adversarial(rng)
        for data_source, gt, extra in [*ROUTES, MATH]:
            start = time.perf_counter()
            score = compute_score(data_source, response, gt, extra)
            took = time.perf_counter() - start
            assert isinstance(score, float) and 0.0 <= score <= 1.0, (data_source, extra, response[:200])
            name = (extra or {}).get("reward_mode", data_source).split(" ")[0]
            times.setdefault(name, []).append(took)
    return times


def p99(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


def report(times: dict[str, list[float]]) -> float:
    every = [t for ts in times.values() for t in ts]
    print(f"\n{len(every)} reward calls: p99 {p99(every) * 1e3:.2f} ms, max {max(every) * 1e3:.0f} ms")
    for name, ts in sorted(times.items()):
        print(f"  {name:28s} p50 {sorted(ts)[len(ts) // 2] * 1e3:7.2f} ms  p99 {p99(ts) * 1e3:7.2f} ms  max {max(ts) * 1e3:7.0f} ms")
    return p99(every)


def test_500_adversarial_responses_through_every_reward():
    assert report(fuzz(500, seed=0)) < 1.0


@pytest.mark.slow
def test_10000_adversarial_responses_through_every_reward():
    times = fuzz(10_000, seed=1)
    assert report(times) < 1.0 and max(max(ts) for ts in times.values()) < 30


def test_a_50_mb_response_is_refused_by_the_size_guard_in_bounded_time():
    import tasks

    row = tasks.get_task("summarization").generate(1, 100, seed=0)[0]
    huge = "<think>x</think>" + "alpha beta. " * (50_000_000 // 12)
    pool = RewardPool(mode="thread", timeout_s=5.0)
    start = time.perf_counter()
    got = pool.score([row, row], [huge, "<think>x</think>alpha beta."])
    assert time.perf_counter() - start < 5.0
    assert (got[0].score, got[0].status) == (0.0, "error") and f"{MAX_RESPONSE_CHARS:,}" in got[0].message
    assert got[1].status == "ok"
