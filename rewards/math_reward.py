"""math_verify (numerical reasoning), as the released scorer applies it.

Only the last 500 characters of the *whole* response are read (thinking included if it reaches
that far). `math_verify.parse` (default LaTeX + plain-expression extraction, `\\boxed{}` first)
must return both a value and its source string; then

    reward = 1  if that string equals a gold answer exactly,
             or math_verify.verify(parse("\\boxed{gold}"), parsed) for some gold answer
             else 0

with math-verify's own 5 s limits on each parse and each comparison.

Threads: math-verify enforces those limits with SIGALRM, which Python allows only in the main
thread. Called from the main thread, this module calls math-verify directly (the reference
behaviour). Called from any other thread, it sends the work to a worker process
(`python -m rewards.math_worker`, one per concurrently scoring thread, reused), where it runs in
the worker's main thread with the same 5 s limits; the caller waits at most `timeout_s` overall
(score 0 after that; the stuck worker is killed and a fresh one started next time).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

TAIL_CHARS = 500
PARSE_TIMEOUT_S = 5
VERIFY_TIMEOUT_S = 5
DEFAULT_TIMEOUT_S = 30.0

logger = logging.getLogger(__name__)
_idle: list[_Worker] = []  # started workers not in use (filled as threads ask)
_idle_lock = threading.Lock()


def _verify_in_main_thread(tail: str, golds: list[str], limits: bool = True) -> float:
    """The released scoring rule. With `limits`, needs the main thread (SIGALRM timeouts)."""
    from math_verify import parse, verify

    parse_limit = PARSE_TIMEOUT_S if limits else None
    verify_limit = VERIFY_TIMEOUT_S if limits else None
    try:
        parsed = parse(tail, parsing_timeout=parse_limit)
    except Exception:
        return 0.0
    if len(parsed) < 2:
        return 0.0
    if parsed[1] in golds:
        return 1.0
    for gold in golds:
        try:
            gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=parse_limit)
            if verify(gold_parsed, parsed, timeout_seconds=verify_limit):
                return 1.0
        except Exception:
            continue
    return 0.0


class _Worker:
    """A `python -m rewards.math_worker` child: JSON requests on stdin, one score line each."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rewards.math_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            env=env,
        )

    def ask(self, tail: str, golds: list[str], timeout_s: float) -> float | None:
        """The worker's score, or None if it failed or took longer than `timeout_s`."""
        try:
            self.process.stdin.write(json.dumps({"tail": tail, "golds": golds}) + "\n")
            self.process.stdin.flush()
            ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
            if ready:
                return float(json.loads(self.process.stdout.readline())["score"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def _verify_in_worker(tail: str, golds: list[str], timeout_s: float) -> float:
    with _idle_lock:
        worker = _idle.pop() if _idle else None
    if worker is None:
        try:
            worker = _Worker()
        except OSError:
            logger.warning("cannot start a math_verify worker; verifying without a time limit")
            return _verify_in_main_thread(tail, golds, limits=False)
    score = worker.ask(tail, golds, timeout_s)
    if score is None:
        logger.warning("math_verify worker failed or took over %.0f s; scoring 0", timeout_s)
        worker.kill()
        return 0.0
    with _idle_lock:
        _idle.append(worker)
    return score


@atexit.register
def _stop_workers() -> None:
    with _idle_lock:
        while _idle:
            _idle.pop().kill()


def _signals_usable() -> bool:
    return hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()


def math_score(response: str, golds: list[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
    """1.0 if the response's final answer matches one of `golds` under math-verify, else 0.0."""
    tail = response[-TAIL_CHARS:]
    if _signals_usable():
        return _verify_in_main_thread(tail, golds)
    return _verify_in_worker(tail, golds, timeout_s)
