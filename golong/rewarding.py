"""Score completions in a worker pool with a time limit; a failing reward never crashes a step.

Each response is scored by its row's reward (`rewards.score_row(row, response, **variant)`) in a
worker: a process pool in inline mode, Ray tasks in Ray mode (`thread` runs in the caller, for
debugging). Inside a worker every call runs under a SIGALRM timer of `timeout_s`; as a backstop for
code that ignores signals, the caller gives the whole batch a deadline and, past it, kills the
workers. A response whose reward raises or times out scores 0 and comes back with its status, so the
trainer counts failures per reward type and evaluation records them per response.
"""

from __future__ import annotations

import importlib
import logging
import math
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

ScoreFn = Callable[..., float] | str
Status = Literal["ok", "error", "timeout"]

DEFAULT_SCORE_FN = "rewards:score_row"
log = logging.getLogger("golong.rewarding")
# Longer responses score 0 unscored ("error"): far past any max_new_tokens (~1M tokens), and a 50 MB
# response would cost one ROUGE-L call ~14 s and ~2.5 GB (measured), plus its copy to a worker.
MAX_RESPONSE_CHARS = 4_000_000
# Time a fresh worker may take to start and import the rewards (sympy, math-verify) once.
_STARTUP_GRACE_S = 60.0


@dataclass(frozen=True)
class RewardResult:
    score: float
    status: Status = "ok"
    message: str = ""


class _Timeout(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


def _worker_signals() -> None:
    """Pool worker start-up: ignore SIGINT (Ctrl-C reaches the whole process group; the trainer decides
    how to stop) and take the default SIGTERM, so `terminate()` stops a worker forked while the
    trainer's own SIGTERM handler was installed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def resolve_score_fn(fn: ScoreFn) -> Callable[..., float]:
    """A callable, or 'module:function' imported (strings travel to workers cheaply)."""
    if callable(fn):
        return fn
    module, _, name = fn.partition(":")
    return getattr(importlib.import_module(module), name)


def score_one(fn: Callable[..., float], row: dict, response: str, variant: dict, timeout_s: float) -> RewardResult:
    """Score one response; exceptions and running past `timeout_s` give 0 with a status."""
    timed = threading.current_thread() is threading.main_thread()
    if timed:
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        score = float(fn(row, response, **variant))
        if not math.isfinite(score):
            return RewardResult(0.0, "error", f"reward returned {score}")
        return RewardResult(score)
    except _Timeout:
        return RewardResult(0.0, "timeout", f"no score within {timeout_s:g} s")
    except Exception as e:  # a reward bug must not stop training; it is counted and reported
        return RewardResult(0.0, "error", f"{type(e).__name__}: {e}"[:300])
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def score_chunk(fn: ScoreFn, items: list[tuple[dict, str]], variant: dict, timeout_s: float) -> list[RewardResult]:
    """Worker entry point: score a list of (row, response)."""
    try:
        f = resolve_score_fn(fn)
    except Exception as e:
        return [RewardResult(0.0, "error", f"cannot load reward function {fn!r}: {e}")] * len(items)
    return [score_one(f, row, resp, variant, timeout_s) for row, resp in items]


class RewardPool:
    """Parallel reward scoring. `mode`: 'process' (inline), 'ray' (Ray tasks), 'thread' (in caller)."""

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 10.0,
        variant: dict[str, Any] | None = None,
        mode: Literal["process", "ray", "thread"] = "process",
        score_fn: ScoreFn = DEFAULT_SCORE_FN,
        ray_num_cpus: float = 1.0,
        max_response_chars: int = MAX_RESPONSE_CHARS,
    ):
        self.workers, self.timeout_s, self.mode = workers, timeout_s, mode
        self.max_response_chars = max_response_chars
        self.variant = dict(variant or {})
        self.score_fn = score_fn
        self.ray_num_cpus = ray_num_cpus
        self._pool: Any = None
        self._warm = False

    def score(self, rows: list[dict], responses: list[str], variant: dict[str, Any] | None = None) -> list[RewardResult]:
        """One result per response, in order; oversized responses score 0 without reaching a worker.

        `variant`: reward options for this call instead of the pool's (evaluation scores with its own)."""
        variant = self.variant if variant is None else dict(variant)
        if len(rows) != len(responses):
            raise ValueError(f"{len(rows)} rows but {len(responses)} responses")
        limit = self.max_response_chars
        fits = [i for i, r in enumerate(responses) if len(r) <= limit]
        out = [RewardResult(0.0, "error", f"response of {len(r):,} characters is over the {limit:,}-character limit")
               for r in responses]
        scored = self._score([rows[i] for i in fits], [responses[i] for i in fits], variant)
        for i, res in zip(fits, scored, strict=True):
            out[i] = res
        return out

    def _score(self, rows: list[dict], responses: list[str], variant: dict[str, Any]) -> list[RewardResult]:
        items = list(zip(rows, responses, strict=True))
        if not items:
            return []
        if self.mode == "thread":
            return score_chunk(self.score_fn, items, variant, self.timeout_s)
        size = max(1, math.ceil(len(items) / (self.workers * 4)))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        # Backstop deadline: every worker busy with per-item limits, plus start-up on first use.
        deadline = self.timeout_s * math.ceil(len(items) / self.workers) + 5.0
        deadline += 0.0 if self._warm else _STARTUP_GRACE_S
        runner = self._score_ray if self.mode == "ray" else self._score_processes
        done = runner(chunks, deadline, variant)
        self._warm = True
        out: list[RewardResult] = []
        for chunk, res in zip(chunks, done, strict=True):
            out.extend(res if res is not None else [RewardResult(0.0, "timeout", "reward worker died or hung")] * len(chunk))
        return out

    def start(self) -> None:
        """Start the worker processes (call early: forking a small process is cheapest)."""
        import multiprocessing as mp

        if self.mode == "process" and self._pool is None:
            from concurrent.futures import ProcessPoolExecutor

            # fork, not spawn: spawn re-imports the caller's __main__, which breaks any script without
            # an `if __name__ == "__main__"` guard. Workers run only reward code (no torch, no tokenizers).
            # An executor, not multiprocessing.Pool: a worker that dies (OOM killer, SIGTERM to the process
            # group) breaks it at once instead of losing its task, and tearing it down cannot deadlock on a
            # queue lock the dead worker held (Pool.terminate does).
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("fork"), initializer=_worker_signals)
            self._pool.submit(int).result()  # fork the workers now, while the process is small

    def _discard_pool(self) -> None:
        pool, self._pool, self._warm = self._pool, None, False
        if pool is None:
            return
        for proc in list((getattr(pool, "_processes", None) or {}).values()):  # stuck ones ignore shutdown
            if proc.is_alive():
                proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def _run_chunks(self, chunks: list, deadline: float, variant: dict) -> tuple[list[list[RewardResult] | None], bool]:
        """Results (None = lost) and whether a worker died, for chunks submitted at once."""
        import time
        from concurrent.futures import wait
        from concurrent.futures.process import BrokenProcessPool

        end = time.monotonic() + deadline

        def submit_all() -> list:
            self.start()
            return [self._pool.submit(score_chunk, self.score_fn, c, variant, self.timeout_s) for c in chunks]

        try:
            futures = submit_all()
        except BrokenProcessPool:  # a worker died while the pool was idle (SIGTERM to the group): start afresh
            self._discard_pool()
            futures = submit_all()
        wait(futures, timeout=max(0.0, end - time.monotonic()))
        results: list[list[RewardResult] | None] = []
        broken = False
        for f in futures:
            if not f.done():
                results.append(None)
                continue
            try:
                results.append(f.result())
            except BrokenProcessPool:
                results.append(None)
                broken = True
        if any(r is None for r in results):
            self._discard_pool()
        return results, broken

    def _score_processes(self, chunks: list, deadline: float, variant: dict) -> list[list[RewardResult] | None]:
        results, broken = self._run_chunks(chunks, deadline, variant)
        if broken:  # a worker died: retry each lost chunk alone, so only the one that kills its worker is lost
            lost = [i for i, r in enumerate(results) if r is None]
            log.warning("a reward worker died; retrying %d chunk(s) one at a time", len(lost))
            for i in lost:
                results[i] = self._run_chunks([chunks[i]], deadline + _STARTUP_GRACE_S, variant)[0][0]
        if any(r is None for r in results):  # died twice, or stuck in code that ignored the alarm
            log.warning("%d reward chunk(s) got no result (worker died or hung past %.0f s); they score 0",
                        sum(r is None for r in results), deadline)
        return results

    def _score_ray(self, chunks: list, deadline: float, variant: dict) -> list[list[RewardResult] | None]:
        import ray

        task = ray.remote(score_chunk).options(num_cpus=self.ray_num_cpus, max_retries=0)
        refs = [task.remote(self.score_fn, c, variant, self.timeout_s) for c in chunks]
        ready, not_ready = ray.wait(refs, num_returns=len(refs), timeout=deadline)
        for ref in not_ready:
            ray.cancel(ref, force=True)
        got = {}
        for ref in ready:  # one at a time: a task whose worker died raises only for its own chunk
            try:
                got[ref] = ray.get(ref)
            except ray.exceptions.RayError as e:
                log.warning("reward task failed (%s); its responses score 0", str(e).splitlines()[0][:200])
        return [got.get(r) for r in refs]

    def close(self) -> None:
        self._discard_pool()
