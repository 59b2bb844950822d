"""Evaluation results: aggregate response records, print tables, write results.json, report.md, plots.

Per model and per task, per length, per (task, length) and overall, over the records of
responses.jsonl (one per model, problem and sample, k samples per problem):

    mean_reward  = mean over samples of the reward (every reward is in [0, 1])
    pass@1       = mean over samples of [reward > pass_threshold]; the threshold defaults to 0.5, as
                   the trainer's pass_rate, which for the binary rewards (EM, Accuracy, Math) means
                   reward == 1 and for graded ones (F1, IoU, SubEM, NDCG, Pairwise, ROUGE-L) "mostly right"
    pass@k       = fraction of problems with at least one passing sample among its k
    reward_se    = standard error of mean_reward over problems: std(per-problem means, ddof=1) / sqrt(n)
    errors       = responses whose reward raised or timed out (scored 0)
    delta        = (every model after the first) paired difference to the first model over the problems
                   both answered: mean_p (r̄_model,p − r̄_base,p), with its s.e. std(diffs, ddof=1) / sqrt(n)
    truncated    = responses cut by max_new_tokens (finish_reason "length")
    no_think     = responses without exactly one `</think>`: the GoLongRL gate scores them 0 whatever the answer
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

ALL = "all"


def _length_name(tokens: int | str) -> str:
    """8192 -> '8k', 1000 -> '1000' (k = 1024 tokens, as in `tasks.length.parse_length`)."""
    n = int(tokens)
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def stats(records: list[dict]) -> dict[str, float | int]:
    """The metrics of the module docstring over `records`."""
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_problem[r["row_id"]].append(r)
    n = len(records)
    means = [sum(r["reward"] for r in rs) / len(rs) for rs in by_problem.values()]
    p = len(means)
    se = 0.0
    if p > 1:
        mu = sum(means) / p
        se = math.sqrt(sum((m - mu) ** 2 for m in means) / (p - 1) / p)
    return {
        "n_problems": p,
        "n_samples": n,
        "mean_reward": sum(r["reward"] for r in records) / n if n else 0.0,
        "pass@1": sum(bool(r["passed"]) for r in records) / n if n else 0.0,
        "pass@k": sum(any(r["passed"] for r in rs) for rs in by_problem.values()) / p if p else 0.0,
        "reward_se": se,
        "errors": sum(r.get("error") is not None for r in records),
        "truncated": sum(r.get("finish_reason") == "length" for r in records),
        "no_think": sum(r.get("think_ok") is False for r in records),
        "mean_response_tokens": sum(r.get("response_tokens", 0) for r in records) / n if n else 0.0,
    }


def paired_delta(records: list[dict], base: list[dict]) -> dict[str, float | int]:
    """Mean and s.e. of the per-problem reward difference `records` − `base` on their common problems."""
    def means(rs: list[dict]) -> dict[str, float]:
        acc: dict[str, list[float]] = defaultdict(list)
        for r in rs:
            acc[r["row_id"]].append(r["reward"])
        return {k: sum(v) / len(v) for k, v in acc.items()}

    a, b = means(records), means(base)
    diffs = [a[k] - b[k] for k in a.keys() & b.keys()]
    n = len(diffs)
    mu = sum(diffs) / n if n else 0.0
    se = math.sqrt(sum((d - mu) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else 0.0
    return {"delta_reward": mu, "delta_se": se, "n_common": n}


def summarize(records: list[dict], models: list[str], settings: dict[str, Any],
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The results dict (what results.json holds) from response records.

    Records are put in a canonical order first, so the same responses give bit-identical numbers
    whatever order a resumed run appended them in.
    """
    records = sorted(records, key=lambda r: (r["model"], r["row_id"], int(r["sample"])))
    tasks = sorted({r["task"] for r in records})
    lengths = sorted({int(r["length"]) for r in records})
    summary: dict[str, Any] = {}
    for m in models:
        mine = [r for r in records if r["model"] == m]
        by_task = {t: [r for r in mine if r["task"] == t] for t in tasks}
        summary[m] = {
            ALL: stats(mine),
            "by_task": {t: stats(rs) for t, rs in by_task.items() if rs},
            "by_length": {str(L): stats(rs) for L in lengths if (rs := [r for r in mine if r["length"] == L])},
            "by_task_length": {
                t: {str(L): stats(rs) for L in lengths if (rs := [r for r in by_task[t] if r["length"] == L])}
                for t in tasks if by_task[t]
            },
        }
    deltas: dict[str, Any] = {}
    if len(models) > 1:
        base = [r for r in records if r["model"] == models[0]]
        for m in models[1:]:
            mine = [r for r in records if r["model"] == m]
            deltas[m] = {
                "vs": models[0],
                ALL: paired_delta(mine, base),
                "by_task": {t: paired_delta([r for r in mine if r["task"] == t], [r for r in base if r["task"] == t])
                            for t in tasks},
                "by_length": {str(L): paired_delta([r for r in mine if r["length"] == L],
                                                   [r for r in base if r["length"] == L]) for L in lengths},
            }
    return {"models": list(models), "tasks": tasks, "lengths": lengths, "settings": settings,
            "summary": summary, "deltas": deltas, **(extra or {})}


def flat_metrics(results: dict[str, Any], model: str, prefix: str = "eval") -> dict[str, float]:
    """`eval/reward/<task>`, `eval/pass@1/<task>` (+ `/all`) for a metrics log (the trainer's hook)."""
    s = results["summary"][model]
    out: dict[str, float] = {}
    for task, st in [*s["by_task"].items(), (ALL, s[ALL])]:
        out[f"{prefix}/reward/{task}"] = float(st["mean_reward"])
        out[f"{prefix}/pass@1/{task}"] = float(st["pass@1"])
    return out


# -- tables ----------------------------------------------------------------------------------------
def _cell(st: dict | None) -> str:
    if not st:
        return "-"
    return f"{st['mean_reward']:.3f} ±{st['reward_se']:.3f}"


def _table_rows(results: dict[str, Any], key: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one table: `key` = 'by_task' or 'by_length', plus an 'all' row.

    Columns: name, problems, then per model mean reward ± se and pass@1, then the paired reward
    change of every later model against the first (the baseline) ± its s.e.
    """
    models = results["models"]
    summary = results["summary"]
    names = results["tasks"] if key == "by_task" else [str(L) for L in results["lengths"]]
    header = ["task" if key == "by_task" else "length", "problems"]
    for m in models:
        header += [f"{m} reward", f"{m} pass@1"]
    header += [f"Δ reward {m}" for m in models[1:]]
    rows = []
    for name in [*names, ALL]:
        sts = [summary[m][ALL] if name == ALL else summary[m][key].get(name) for m in models]
        shown = name if key == "by_task" or name == ALL else _length_name(name)
        n = max((st["n_problems"] for st in sts if st), default=0)
        row = [shown, str(n)]
        for st in sts:
            row += [_cell(st), f"{st['pass@1']:.3f}" if st else "-"]
        for m in models[1:]:
            d = results["deltas"][m][ALL] if name == ALL else results["deltas"][m][key].get(name)
            row.append(f"{d['delta_reward']:+.3f} ±{d['delta_se']:.3f}" if d and d["n_common"] else "-")
        rows.append(row)
    return header, rows


def _task_length_rows(results: dict[str, Any], model: str) -> tuple[list[str], list[list[str]]]:
    lengths = [str(L) for L in results["lengths"]]
    header = ["task", *[_length_name(L) for L in lengths]]
    grid = results["summary"][model]["by_task_length"]
    rows = [[t, *[f"{grid[t][L]['mean_reward']:.3f}" if L in grid.get(t, {}) else "-" for L in lengths]]
            for t in results["tasks"]]
    by_len = results["summary"][model]["by_length"]
    rows.append([ALL, *[f"{by_len[L]['mean_reward']:.3f}" if L in by_len else "-" for L in lengths]])
    return header, rows


def _rich_table(title: str, header: list[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=title)
    first = min(30, max(len(r[0]) for r in [header, *rows]))
    for i, h in enumerate(header):  # "fold": a cell too wide for the console wraps, it is never cut off
        table.add_column(h, justify="left" if i == 0 else "right", overflow="fold", min_width=first if i == 0 else None)
    for r in rows:
        table.add_row(*r, style="bold" if r[0] == ALL else None)
    return table


def _per_model_columns(header: list[str], models: list[str]) -> list[tuple[str, list[int]]]:
    """Column groups of a by-task / by-length table, one per model: name, problems, the model's reward
    and pass@1, and (after the first) its Δ against the baseline."""
    groups = []
    for j, m in enumerate(models):
        cols = [0, 1, 2 + 2 * j, 3 + 2 * j]
        if j:
            cols.append(2 + 2 * len(models) + j - 1)
        groups.append((m, cols))
    return groups


def print_tables(results: dict[str, Any], console: Any) -> None:
    """Rich tables: by task, by length, and (several lengths) task x length per model.

    A table wider than the console (several models, long names, an 80-column terminal) is printed
    as one table per model instead, so no column is cut off."""
    models = results["models"]

    def show(title: str, header: list[str], rows: list[list[str]], split: bool = True) -> None:
        from rich.measure import Measurement

        table = _rich_table(title, header, rows)
        natural = Measurement.get(console, console.options.update(width=10**6), table).maximum  # unwrapped width
        if not split or len(models) == 1 or natural <= console.width:
            console.print(table)
            return
        for m, cols in _per_model_columns(header, models):
            delta = len(cols) > 4
            names = [header[0], header[1], "reward", "pass@1", *(["Δ reward"] if delta else [])]
            sub = f"{title}: {m}" + (f" (Δ: against {models[0]}, same problems)" if delta else "")
            console.print(_rich_table(sub, names, [[r[i] for i in cols] for r in rows]))

    k = results["settings"].get("k", 1)
    show(f"mean reward ± s.e. and pass@1 by task ({k} sample(s) per problem)", *_table_rows(results, "by_task"))
    show("by prompt length (tokens)", *_table_rows(results, "by_length"))
    if len(results["lengths"]) > 1:
        for m in models:
            show(f"{m}: mean reward by task and length", *_task_length_rows(results, m), split=False)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown_report(results: dict[str, Any], plots: list[Path]) -> str:
    """report.md: settings, the tables, the plots, overlap and reward errors, where the responses are."""
    s = results["settings"]
    models = results["models"]
    parts = ["# Evaluation report", ""]
    paths = results.get("model_paths") or {}
    model_lines = [f"- **{m}**: `{paths.get(m, m)}`" for m in models] if isinstance(paths, dict) else []
    parts += ["## Models", "", *(model_lines or [f"- {m}" for m in models]), ""]
    if len(models) > 1:
        parts += [f"Δ columns: mean over problems of (reward of the model − reward of {models[0]}) on the same "
                  "problems, ± its standard error.", ""]
    sampling = "greedy" if s.get("temperature", 0) == 0 else f"temperature {s['temperature']}, top_p {s.get('top_p', 1.0)}"
    parts += ["## Settings", "",
              f"{s.get('k', 1)} sample(s) per problem, {sampling}, at most {s.get('max_new_tokens')} new tokens; "
              f"pass = reward > {s.get('pass_threshold')}. Data: {results.get('data', 'given rows')}.", ""]
    parts += ["## By task", "", _markdown(*_table_rows(results, "by_task")), ""]
    parts += ["## By prompt length", "", _markdown(*_table_rows(results, "by_length")), ""]
    if len(results["lengths"]) > 1:
        for m in models:
            parts += [f"### {m}: mean reward by task and length", "", _markdown(*_task_length_rows(results, m)), ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    overlap = results.get("overlap")
    if overlap:
        verb = "kept (--keep-overlap)" if overlap.get("kept") else "excluded"
        parts += ["## Overlap with the training data", "",
                  f"{overlap['count']} evaluation row(s) have a prompt that is also in the training data; {verb}."]
        if overlap["count"]:
            parts += ["Rows (index in the evaluation data: row id): "
                      + ", ".join(f"{i}: `{r}`" for i, r in zip(overlap["indices"][:50], overlap["row_ids"][:50], strict=False))
                      + (" ..." if overlap["count"] > 50 else "")]
        parts += [""]
    gated = {m: results["summary"][m][ALL]["no_think"] for m in models}
    if any(gated.values()):
        parts += ["## Think gate", "",
                  "Responses without exactly one `</think>` score 0 whatever their answer (the GoLongRL gate): "
                  + ", ".join(f"{m}: {n} of {results['summary'][m][ALL]['n_samples']}" for m, n in gated.items())
                  + ".", ""]
    errors = {m: results["summary"][m][ALL]["errors"] for m in models}
    if any(errors.values()):
        parts += ["## Reward errors", "",
                  "Responses whose reward raised or timed out scored 0: "
                  + ", ".join(f"{m}: {n}" for m, n in errors.items())
                  + ". The `error` field of responses.jsonl says why.", ""]
    parts += ["## Responses", "",
              "Every response is in `responses.jsonl` (model, row_id, task, length, sample, reward, error, response). "
              "Failures of one model, for example:",
              "", "```", f"jq -c 'select(.model == \"{models[0]}\" and .reward == 0) | {{task, length, response}}' "
              "responses.jsonl | head", "```", ""]
    return "\n".join(parts)


# -- plots -----------------------------------------------------------------------------------------
def plot_by_task(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars: mean reward per task (and overall), one bar per model, ± s.e. whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, tasks = results["models"], [*results["tasks"], ALL]
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(tasks) * max(1, len(models)) ** 0.5), 4.5))
    for i, m in enumerate(models):
        s = results["summary"][m]
        sts = [s[ALL] if t == ALL else s["by_task"].get(t) for t in tasks]
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(tasks))]
        ax.bar(xs, [st["mean_reward"] if st else 0.0 for st in sts], width,
               yerr=[st["reward_se"] if st else 0.0 for st in sts], capsize=2, label=m)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_ylabel("mean reward")
    ax.set_ylim(0, 1.18)
    ax.set_title("mean reward by task (± standard error over problems)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncols=len(models))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_by_length(results: dict[str, Any], path: Path) -> Path:
    """One panel per task (and overall): mean reward against prompt length, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*results["tasks"], ALL]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False, sharey=True)
    lengths = results["lengths"]
    for ax, task in zip(axes.flat, panels, strict=False):
        for m in results["models"]:
            s = results["summary"][m]
            grid = s["by_length"] if task == ALL else s["by_task_length"].get(task, {})
            pts = [(L, grid[str(L)]) for L in lengths if str(L) in grid]
            ax.errorbar([L for L, _ in pts], [st["mean_reward"] for _, st in pts],
                        yerr=[st["reward_se"] for _, st in pts], marker="o", capsize=2, label=m)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [_length_name(L) for L in lengths])
        ax.minorticks_off()
        ax.set_ylim(-0.02, 1.05)
        ax.set_title(task, fontsize=9, fontweight="bold" if task == ALL else "normal")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("prompt length (tokens)")
    fig.supylabel("mean reward")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- files -----------------------------------------------------------------------------------------
def write_results(results: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    tmp.replace(path)
    return path


def write_report(results: dict[str, Any], out_dir: Path, plots: bool = True) -> list[Path]:
    """results.json, the two plots (when `plots`) and report.md into `out_dir`; the paths written."""
    written = [write_results(results, out_dir)]
    images: list[Path] = []
    if plots and results["tasks"]:
        images = [plot_by_task(results, out_dir / "reward_by_task.png"),
                  plot_by_length(results, out_dir / "reward_by_length.png")]
    report = out_dir / "report.md"
    report.write_text(markdown_report(results, images), encoding="utf-8")
    return [*written, *images, report]
