"""Plots of a run: reward and pass-rate curves per reward type (named by its tasks) from `metrics.jsonl`, as PNG."""

from __future__ import annotations

from pathlib import Path

from golong.config import RecipeError
from golong.metrics import read_jsonl


def series(history: list[dict], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    """{reward type: (steps, values)} for every `<prefix>/<reward type>` metric in the history."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for rec in history:
        for key, value in rec.items():
            if key.startswith(prefix + "/"):
                steps, values = out.setdefault(key.split("/", 1)[1], ([], []))
                steps.append(int(rec["step"]))
                values.append(float(value))
    return out


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over at most `window` points (rewards are noisy per step)."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def legend_names(run_dir: str | Path, keys: set[str]) -> dict[str, str]:
    """Curve names: the task names, as `golong eval` names them, with the reward type the metrics are
    keyed by: "precise_retrieval (EM)"; "all tasks" for the mean over all."""
    from golong.runs import task_labels

    labels = task_labels(run_dir)
    return {k: "all tasks" if k == "all" else f"{labels[k]} ({k})" if k in labels else k for k in keys}


def plot_run(run_dir: str | Path, window: int = 5) -> list[Path]:
    """Write `reward_curves.png` (reward and pass rate per reward type) into the run folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    history = read_jsonl(run / "metrics.jsonl")
    if not history:
        raise RecipeError(f"{run / 'metrics.jsonl'} is missing or empty: is {run} a golong run folder?")
    names = legend_names(run, {k.split("/", 1)[1] for rec in history for k in rec if k.startswith("reward/")})
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, prefix, title in ((axes[0], "reward", "mean reward"), (axes[1], "pass_rate", "pass rate (reward > 0.5)")):
        for kind, (steps, values) in sorted(series(history, prefix).items(), key=lambda kv: names.get(kv[0], kv[0])):
            style = {"color": "black", "linewidth": 2.5} if kind == "all" else {"linewidth": 1.3}
            ax.plot(steps, smooth(values, window), label=names.get(kind, kind), **style)
        ax.set_xlabel("step")
        ax.set_title(f"{title}, {window}-step moving average")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(str(run))
    fig.tight_layout()
    out = run / "reward_curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [out]
