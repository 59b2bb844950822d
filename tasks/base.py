"""The `Task` base class: a capability, its GoLongRL reward route, and an offline row generator.

A task subclass names its reward route (`data_source`, `reward_mode`; its `reward_type` follows from
the route), its answer format (`instruction`) and implements `build(rng, split, **knobs) -> Problem`: the facts the
document must contain (`essentials`), a generator of distractor lines (`filler`), the question and
the gold answer. `generate` then pads the document with filler lines until the prompt reaches the
target token length, and writes rows in the GoLongRL (verl RL) schema:

    {"data_source": str, "prompt": [{"role": "user", "content": str}], "ability": str,
     "reward_model": {"style": "rule", "ground_truth": {"doc_ids": [str], "golden_label": str,
                                                        "summary": str}},
     "extra_info": {"reward_mode": str, "question": str, "task": str, "length": int, "seed": int,
                    "split": str, "index": int, "prompt_tokens": int}}

Rows are reproducible: the random generator of row i is seeded by (task name, split, seed, i).
`score(row, response)` hands the row to the reward that the row's route selects.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tasks.length import Counter, make_counter, parse_length
from tasks.textgen import check_split

LENGTH_TOLERANCE = 0.03  # refit until the prompt is within 3% of the target (the promise is 10%)
LANGUAGE = "English"  # ground_truth.summary: the released scorer reads it as the language flag

# Answer-format sentences shared by the built-in tasks. Every reward first requires exactly one
# `</think>` in the response, so every prompt says where the reasoning ends.
THINK = "Reason step by step first and end your reasoning with </think>."
ANSWER_LINES = (
    THINK + " After it, write [Answer] on its own line, then {what}, one per line, and nothing else."
)


class TaskError(ValueError):
    """A task that is misdefined, unknown, or called with bad arguments."""


@dataclass
class Problem:
    """One generated problem before it is padded to length.

    essentials: lines the document must contain (needles, gold records), inserted among fillers.
    filler:     makes one distractor line; it must never create a line that changes the answer.
    ordered:    keep the essentials in their given relative order (state tracking needs it).
    doc_ids / golden_label: the gold answer, in the GoLongRL ground-truth fields.
    """

    question: str
    essentials: list[str]
    filler: Callable[[random.Random], str]
    doc_ids: list[str] = field(default_factory=list)
    golden_label: str = ""
    context: str = "Read the document below carefully."
    preamble: str = ""
    postscript: str = ""
    ordered: bool = False
    language: str = LANGUAGE


class Task:
    """Base class of every task. Subclasses set the class attributes and implement `build`."""

    name: ClassVar[str] = ""
    capability: ClassVar[str] = ""  # the GoLongRL `ability` string
    data_source: ClassVar[str] = ""  # with reward_mode, the route: it selects the reward
    reward_mode: ClassVar[str] = ""
    instruction: ClassVar[str] = ""  # how the answer must be written so the reward can parse it
    source: ClassVar[str] = "built-in"
    knobs: ClassVar[dict[str, Any]] = {}  # difficulty knobs and their defaults

    # -- to implement -------------------------------------------------------------------------
    def build(self, rng: random.Random, split: str, **knobs: Any) -> Problem:
        raise TaskError(f"task {self.name!r} cannot generate rows (it has no build method)")

    # -- public API ----------------------------------------------------------------------------
    @property
    def reward_type(self) -> str:
        """The reward type (one of rewards.REWARD_TYPES) the task's route selects: derived from the route
        by the same mapping every row goes through, so a task says which reward it uses once. A plug-in
        may still spell it out as a class attribute; loading checks that it agrees with the route."""
        import rewards

        return rewards.reward_type(self.data_source, {"reward_mode": self.reward_mode})

    def generate(
        self,
        n: int,
        length: int | str,
        *,
        seed: int = 0,
        split: str = "train",
        tokenizer: Any = None,
        start: int = 0,
        **knobs: Any,
    ) -> list[dict]:
        """n rows whose prompts are `length` tokens long (±3% when the fillers allow it).

        tokenizer: a HF tokenizer, a text->int callable, a tokenizer path, or None for the
        approximate counter (`tasks.length.approx_tokens`, an estimate of BPE token counts).
        Rows `start .. start+n-1` are generated; row i depends only on (name, split, seed, i, length,
        tokenizer, knobs).
        """
        check_split(split)
        target = parse_length(length)
        if n < 0:
            raise TaskError(f"n must be >= 0, got {n}")
        params = self.resolve_knobs(knobs)
        counter = make_counter(tokenizer)
        return [self.make_row(i, target, seed, split, counter, params) for i in range(start, start + n)]

    def score(self, row: dict, response: str) -> float:
        """The row's GoLongRL reward for `response` (routed by the row's data_source/reward_mode)."""
        import rewards

        return float(rewards.score_row(row, response))

    def resolve_knobs(self, knobs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(knobs) - set(self.knobs))
        if unknown:
            valid = ", ".join(f"{k}={v!r}" for k, v in self.knobs.items()) or "none"
            raise TaskError(f"task {self.name!r} has no knob {', '.join(unknown)} (knobs: {valid})")
        return {**self.knobs, **knobs}

    def row_rng(self, split: str, seed: int, index: int) -> random.Random:
        # str seeds are hashed with SHA-512 by `random`, so this is stable across runs and machines.
        return random.Random(f"golong|{self.name}|{split}|{seed}|{index}")

    def make_row(
        self, index: int, target: int, seed: int, split: str, counter: Counter, knobs: dict[str, Any]
    ) -> dict:
        rng = self.row_rng(split, seed, index)
        problem = self.build(rng, split, **knobs)
        text, n_tokens = fit_prompt(self, problem, rng, target, counter)
        return {
            "data_source": self.data_source,
            "prompt": [{"role": "user", "content": text}],
            "ability": self.capability,
            "reward_model": {
                "style": "rule",
                "ground_truth": {
                    "doc_ids": [str(d) for d in problem.doc_ids],
                    "golden_label": str(problem.golden_label),
                    "summary": problem.language,
                },
            },
            "extra_info": {
                "reward_mode": self.reward_mode,
                "question": problem.question,
                "task": self.name,
                "length": int(target),
                "seed": int(seed),
                "split": split,
                "index": int(index),
                "prompt_tokens": int(n_tokens),
            },
        }

    def render(self, problem: Problem, lines: list[str]) -> str:
        """The user message: context, the document, the question, the answer-format instruction."""
        body = "\n".join(lines)
        return (
            f"{problem.context}\n\n<document>\n{problem.preamble}{body}\n{problem.postscript}</document>\n\n"
            f"{problem.question}\n\n{self.instruction}"
        )

    def __repr__(self) -> str:
        return f"<Task {self.name} ({self.capability}, {self.reward_type}, {self.source})>"


def _interleave(essentials: list[str], depths: list[float], fillers: list[str]) -> list[str]:
    """Insert essential i at relative depth depths[i] of the filler list."""
    n = len(fillers)
    slots = sorted(((min(int(d * (n + 1)), n), i) for i, d in enumerate(depths)))
    out: list[str] = []
    prev = 0
    for pos, i in slots:
        out.extend(fillers[prev:pos])
        out.append(essentials[i])
        prev = pos
    out.extend(fillers[prev:])
    return out


def fit_prompt(task: Task, problem: Problem, rng: random.Random, target: int, counter: Counter) -> tuple[str, int]:
    """Pad the document with filler lines until the prompt is within LENGTH_TOLERANCE of `target`.

    Filler token counts are summed line by line (plus the measured cost of one newline); the whole
    prompt is then measured once and fillers are added or dropped until the measurement is within
    tolerance (at most 6 rounds; the essentials alone may already exceed a very small target).
    """
    depths = [rng.random() for _ in problem.essentials]
    if problem.ordered:
        depths.sort()
    fillers: list[str] = []
    costs: list[int] = []
    sep = max(0, sum(counter(["a\nb"])) - sum(counter(["a", "b"])))

    def measure() -> tuple[str, int]:
        text = task.render(problem, _interleave(problem.essentials, depths, fillers))
        return text, counter([text])[0]

    text, total = measure()
    for _ in range(6):
        gap = target - total
        if abs(gap) <= LENGTH_TOLERANCE * target:
            break
        if gap > 0:
            avg = (sum(costs) / len(costs)) if costs else None
            while gap > 0:
                want = max(1, math.ceil(gap / avg)) if avg else 16
                batch = [problem.filler(rng) for _ in range(min(want, 4096))]
                for line, c in zip(batch, counter(batch), strict=True):
                    c = max(1, c + sep)
                    if gap - c / 2 < 0:  # adding it would overshoot by more than it undershoots
                        gap = 0
                        break
                    fillers.append(line)
                    costs.append(c)
                    gap -= c
                avg = sum(costs) / len(costs) if costs else avg
        else:
            while gap < 0 and fillers:
                c = costs.pop()
                fillers.pop()
                gap += c
        text, total = measure()
    return text, total
