"""The training data mixture: weighted sources, a deterministic order, and a resumable position.

A source is a dataset in the GoLongRL schema (`path`: file, folder or hub id, read by
`golong.data.load_rows`) or rows generated offline by tasks (`generate: [names] | all`, or a plug-in
`task_file: file.py:Class`; `n` rows per task). Draw j picks a source with probability
weight / sum(weights) from a generator seeded by (seed, j); each source walks through a fresh
permutation of its rows per epoch, seeded by (seed, source, epoch). The position is therefore just
counters (draws, per-source epoch and cursor), which a checkpoint saves and a resume restores.

Prompts are tokenized with the policy's chat template (`encode_prompt`, shared with evaluation); a
prompt longer than `max_prompt_tokens` keeps its last `max_prompt_tokens` tokens (left truncation, as
GoLongRL trains) and is marked, so the step's `truncated/<reward type>` metric counts it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from golong.config import DataConfig, DataSourceConfig, RecipeError
from golong.rollout.base import encode_chat


@dataclass
class Prompt:
    """One sampled training prompt."""

    row: dict[str, Any]
    ids: list[int]
    reward_type: str  # the row's reward type (rewards.row_reward_type), the key TMN pools by: "EM", "F1", ...
    truncated: bool
    source: int


def encode_prompt(tokenizer: Any, row: dict[str, Any], max_tokens: int | None) -> tuple[list[int], bool]:
    """A row's prompt as chat-template token ids, left-truncated to its last `max_tokens` (None or 0: never
    cut), and whether it was cut. Training and evaluation encode prompts through this one function."""
    ids = encode_chat(tokenizer, list(row["prompt"]))
    if max_tokens and len(ids) > max_tokens:
        return ids[-max_tokens:], True
    return ids, False


def load_source(src: DataSourceConfig, index: int, seed: int, tokenizer: Any,
                skip_invalid: bool = False) -> tuple[list[dict[str, Any]], int]:
    """Rows of one source (a dataset, generated rows, or a plug-in task's rows), and how many invalid
    rows were skipped (`skip_invalid`; otherwise an invalid row is a DataError)."""
    given = [k for k in ("path", "generate", "task_file") if getattr(src, k)]
    if len(given) != 1:
        raise RecipeError(f"data.sources.{index}: give exactly one of path, generate, task_file (got {given or 'none'})")
    if src.path:
        from golong import data

        rows = data.load_rows(src.path)
        valid = data.checked_rows(rows, src.path, skip_invalid)
        return list(valid), len(rows) - len(valid)
    import tasks

    if src.task_file:
        chosen = [tasks.load_task_spec(src.task_file)]
    else:
        names = [src.generate] if isinstance(src.generate, str) else list(src.generate or [])
        chosen = tasks.all_tasks() if names == ["all"] else [tasks.get_task(n) for n in names]
    rows: list[dict[str, Any]] = []
    for task in chosen:
        rows += task.generate(src.n, src.length, seed=seed + index, split=src.split, tokenizer=tokenizer, **src.knobs)
    return rows, 0


class Mixture:
    """Weighted, seeded, resumable sampling of chat prompts from `data.sources`."""

    def __init__(self, cfg: DataConfig, tokenizer: Any, seed: int | None = None):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.seed = cfg.seed if seed is None else seed
        loaded = [load_source(s, i, self.seed, tokenizer, cfg.skip_invalid) for i, s in enumerate(cfg.sources)]
        self.sources = [rows for rows, _ in loaded]
        self.skipped_invalid = sum(n for _, n in loaded)  # invalid rows skipped (data.skip_invalid)
        for i, rows in enumerate(self.sources):
            if not rows:
                raise RecipeError(f"data.sources.{i} has no rows; check its path or generate settings")
        self.weights = [s.weight for s in cfg.sources]
        self.draws = 0
        self.epoch = [0] * len(self.sources)
        self.cursor = [0] * len(self.sources)
        self._perm: dict[int, list[int]] = {}

    def _order(self, s: int) -> list[int]:
        perm = self._perm.get(s)
        if perm is None:
            perm = list(range(len(self.sources[s])))
            random.Random(f"{self.seed}|{s}|{self.epoch[s]}").shuffle(perm)
            self._perm[s] = perm
        return perm

    def next_row(self) -> tuple[int, int]:
        """(source, row index) of the next draw; advances the position."""
        s = random.Random(f"{self.seed}|draw|{self.draws}").choices(range(len(self.sources)), self.weights)[0]
        self.draws += 1
        i = self._order(s)[self.cursor[s]]
        self.cursor[s] += 1
        if self.cursor[s] == len(self.sources[s]):
            self.epoch[s] += 1
            self.cursor[s] = 0
            self._perm.pop(s, None)
        return s, i

    def sample(self, n: int) -> list[Prompt]:
        import rewards

        out = []
        for _ in range(n):
            s, i = self.next_row()
            row = self.sources[s][i]
            ids, cut = self.encode(row)
            out.append(Prompt(row=row, ids=ids, reward_type=rewards.row_reward_type(row), truncated=cut, source=s))
        return out

    def encode(self, row: dict[str, Any]) -> tuple[list[int], bool]:
        """Chat-template token ids, left-truncated to `data.max_prompt_tokens`."""
        return encode_prompt(self.tokenizer, row, self.cfg.max_prompt_tokens)

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "epoch": list(self.epoch), "cursor": list(self.cursor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["epoch"]) != len(self.sources):
            raise RecipeError("cannot resume: the checkpoint has a different number of data.sources than the recipe")
        self.draws, self.epoch, self.cursor = state["draws"], list(state["epoch"]), list(state["cursor"])
        self._perm.clear()
