"""The end-of-run summary: per reward type (named by the tasks behind it), reward at the start vs the
end, pass rate, responses scored, errors; where the checkpoint is; what to run next. Printed by
`golong train` when a run ends and by `golong plot`.

"Start" and "end" are a reward type's first and last 10% of the steps it was drawn in (at least one
step each): one drawn in few steps would otherwise often have no value in the run's first 10% of steps.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHARE = 0.1


@dataclass
class RewardTypeSummary:
    reward_type: str  # the reward type the metrics are keyed by ("all" for every response)
    label: str  # the task name(s) behind it
    steps: int
    reward_first: float
    reward_last: float
    pass_rate_last: float
    responses: int | None  # None for runs logged before responses/<reward type> existed
    errors: int


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize(history: list[dict[str, Any]], labels: dict[str, str] | None = None) -> list[RewardTypeSummary]:
    """One row per reward type in `history` (a run's metrics.jsonl records), "all" last; `labels` names
    the tasks behind each reward type (`golong.runs.task_labels`)."""
    labels = labels or {}
    names = sorted({k.split("/", 1)[1] for rec in history for k in rec if k.startswith("reward/")} - {"all"})
    out = []
    for kind in [*names, "all"]:
        recs = [rec for rec in history if f"reward/{kind}" in rec]
        if not recs:
            continue
        k = max(1, round(SHARE * len(recs)))
        counts = [rec.get(f"responses/{kind}") for rec in recs]
        out.append(RewardTypeSummary(
            reward_type=kind, label="all tasks" if kind == "all" else labels.get(kind, kind), steps=len(recs),
            reward_first=_mean([rec[f"reward/{kind}"] for rec in recs[:k]]),
            reward_last=_mean([rec[f"reward/{kind}"] for rec in recs[-k:]]),
            pass_rate_last=_mean([rec.get(f"pass_rate/{kind}", 0.0) for rec in recs[-k:]]),
            responses=None if None in counts else int(sum(counts)),
            errors=int(sum(rec.get(f"reward_errors/{kind}", 0) + rec.get(f"reward_timeouts/{kind}", 0) for rec in recs)),
        ))
    return out


def summary_table(rows: list[RewardTypeSummary], title: str):
    """The table, narrow enough for an 80-column terminal (no vertical rules; cells wrap, never cut)."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAVY, pad_edge=False, show_edge=False,
                  collapse_padding=True)
    longest = min(30, max(len(r.label) for r in rows))
    for col in ("task", "reward", "steps", "start → end", "pass", "scored", "errors"):
        table.add_column(col, justify="left" if col in ("task", "reward") else "right", overflow="fold",
                         min_width=longest if col == "task" else None, no_wrap=col == "start → end")
    for r in rows:
        delta = r.reward_last - r.reward_first
        colour = "green" if delta > 0 else "red" if delta < 0 else "default"
        table.add_row(
            f"[bold]{r.label}[/bold]" if r.reward_type == "all" else r.label, "" if r.reward_type == "all" else r.reward_type,
            str(r.steps),
            f"{r.reward_first:.3f} → [{colour}]{r.reward_last:.3f}[/{colour}]", f"{r.pass_rate_last:.0%}",
            "—" if r.responses is None else str(r.responses), str(r.errors),
            end_section=r.reward_type != "all" and rows[-1].reward_type == "all" and r is rows[-2],
        )
    return table


def next_commands(run_dir: Path, base_model: str | None) -> list[str]:
    run = shlex.quote(str(run_dir))
    models = f"--model {shlex.quote(base_model)} --model {run} --name base --name trained" if base_model else f"--model {run}"
    return [
        f"golong eval {models} --synth --tasks all --lengths 512,1k -n 20 -o {shlex.quote(str(run_dir / 'eval'))}",
        f"golong plot {run}",
    ]


def print_run_summary(run_dir: str | Path, console, history: list[dict[str, Any]] | None = None,
                      plot: bool = True) -> None:
    """The summary table of the run in `run_dir`, its newest checkpoint and the next commands."""
    import yaml

    from golong import checkpoint, runs
    from golong.metrics import read_jsonl

    run_dir = Path(run_dir)
    history = read_jsonl(run_dir / "metrics.jsonl") if history is None else history
    if history:
        title = (f"{run_dir}: {len(history)} RL steps. start → end: mean reward over a task's first and last 10% of "
                 "steps; pass: share of responses with reward > 0.5 in the last 10%")
        console.print(summary_table(summarize(history, runs.task_labels(run_dir)), title))
    ckpts = checkpoint.list_checkpoints(run_dir)
    if ckpts:
        console.print(f"checkpoint: {ckpts[-1]}", highlight=False)
    try:
        base = (yaml.safe_load((run_dir / runs.RECIPE_FILE).read_text()) or {}).get("model", {}).get("path")
    except (OSError, yaml.YAMLError, AttributeError):
        base = None
    commands = next_commands(run_dir, base if isinstance(base, str) else None)
    if not plot:
        commands = commands[:1]
    console.print("next:", highlight=False)
    for cmd in commands:
        console.print(f"  {cmd}", highlight=False, markup=False, soft_wrap=True)
