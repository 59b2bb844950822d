"""Issue 17's evidence as README tables and plots, from the three experiments' results.json files.

    PYTHONPATH=. python bench/ksa_report.py --replication R/results.json --grpo G/results.json \
        --conversion C/results.json --name ksa_h200 --md bench/results/ksa_h200/report.md

Any of the three may be missing (a run cut short): its sections are left out. Writes
docs/<name>_replication.png, docs/<name>_grpo.png, docs/<name>_conversion.png and the markdown (the
tables, then the paper's three goals checked against the numbers). K/V memory per sequence is the
analytic count of ksa/cache.py's storage (bench/ksa_memory.py checks it against a real KSACache):
full layer T entries; KSA layer a ring of (W+1)*C text entries plus T/C summaries; SCA the ring only
(its old summaries are never read; golong's KSACache still keeps them). bf16, K and V.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TASKS = ("needle", "kv", "hop2", "count")
RETRIEVAL = ("needle", "kv", "hop2")


def load(path: str | None) -> dict | None:
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


def _fmt(x) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.2f}"


def _len(n) -> str:
    n = int(n)
    return f"{n // 1024}K" if n >= 1024 else str(n)


def kv_bytes(model: dict, length: int) -> dict[str, int]:
    """K/V bytes of one sequence of `length` tokens per variant (module docstring)."""
    shape, windows, chunk = model["shape"], model["windows"], model["chunk"]
    per_entry = 2 * shape["num_key_value_heads"] * shape["head_dim"] * 2
    layers = shape["num_hidden_layers"]
    windows = windows or [1 << 20] * layers
    ring = [min(length, (w + 1) * chunk) if w * chunk < length else length for w in windows]
    summaries = [length // chunk if w * chunk < length else 0 for w in windows]
    return {"full": layers * length * per_entry, "ksa": (sum(ring) + sum(summaries)) * per_entry,
            "sca": sum(ring) * per_entry}


def _rows(event: dict) -> str:
    """What a curriculum stage's rows ask: `recall` (noise-free recall rows) or its tasks joined by +."""
    return "recall" if event.get("recall") else "+".join(event.get("tasks", [])) or "all tasks"


def replication_md(r: dict) -> str:
    lengths = r["plan"]["eval_lengths"]
    rows = {v: row for v, row in r["variants"].items() if row.get("accuracy")}
    train = sorted({s[0] for s in r["plan"]["stages"]})
    out = [f"**From-scratch replication** ({r.get('scale', '?')}, {r['machine'].get('gpu') or 'CPU'}; "
           f"{r['model']['params'] / 1e6:.2f}M params, {r['model']['shape']['num_hidden_layers']} layers, hidden "
           f"{r['model']['shape']['hidden_size']}; KSA windows {r['model']['windows'][:4] if r['model']['windows'] else '—'}…; "
           f"{r['steps']} steps ({', '.join(r['variants'])} in lockstep) in {r.get('train_wall_s', 0):.0f} s; train lengths {train[0]}–{train[-1]}). "
           "Held-out accuracy (teacher-forced, 32 kv pairs):", "",
           "| task | variant | " + " | ".join(_len(n) for n in lengths) + " |",
           "|---|---|" + "---|" * len(lengths)]
    out += accuracy_rows({v: row["accuracy"] for v, row in rows.items()}, lengths)
    out += ["", "| variant | s/step at each train length | K/V per sequence (bf16) at " +
            ", ".join(_len(n) for n in lengths) + " |", "|---|---|---|"]
    for v, row in r["variants"].items():
        steps = ", ".join(f"{n}: {t * 1000:.0f} ms" for n, t in row.get("step_s_by_length", {}).items())
        mem = ", ".join(f"{kv_bytes(r['model'], n)[v] / 2**10:,.0f} KiB" for n in lengths)
        out.append(f"| {v} | {steps} | {mem} |")
    events = ", ".join(f"step {e['step']} → {e['length']}×{e['pairs']} {_rows(e)} ({e['why']})"
                       for e in r.get("curriculum", []))
    return "\n".join(out + ["", f"Curriculum: {events}."])


def grpo_md(g: dict) -> str:
    c = g["config"]
    tasks = c.get("tasks", TASKS)  # the tasks the run trained on
    out = [f"**GRPO + TMN-Reweight** ({g.get('scale', '?')}, {g['machine'].get('gpu') or 'CPU'}; {c['length']} tokens, "
           f"{c['prompts_per_task']} prompts/task × G={c['group']}, lr {c['lr']}). Mean reward, first → last quarter "
           "of the steps:", "", "| policy | steps | " + " | ".join(tasks) + " | held-out all, before → after | s/step (gen + train) |",
           "|---|---|" + "---|" * len(tasks) + "---|---|"]
    for name, row in g["policies"].items():
        rise = reward_change(row)
        cells = [f"{_fmt(a)} → {_fmt(b)}" for a, b in (rise.get(t, (None, None)) for t in tasks)]
        after = row.get("acc_after", {}).get("all")
        out.append(f"| {name} | {len(row['steps'])} | " + " | ".join(cells) +
                   f" | {_fmt(row['acc_before']['all'])} → {_fmt(after)} | {_fmt(row.get('mean_step_s'))} "
                   f"({_fmt(row.get('mean_gen_s'))} + {_fmt(row.get('mean_train_s'))}) |")
    return "\n".join(out)


def reward_change(row: dict) -> dict[str, tuple[float, float]]:
    """{task: (mean reward over the first quarter of the steps, over the last quarter)}."""
    steps = row["steps"]
    if not steps:
        return {}
    k = max(1, len(steps) // 4)
    return {t: (float(np.mean([s["reward"][t] for s in steps[:k]])), float(np.mean([s["reward"][t] for s in steps[-k:]])))
            for t in TASKS if t in steps[0]["reward"]}  # the tasks the run trained on (ksa_grpo.py --tasks)


def conversion_md(c: dict) -> str:
    keys = [k for k in ("teacher", "converted_undistilled", "distilled") if k in c]
    lengths = list(c["teacher"]["accuracy"])
    d = c.get("distill", {})
    out = [f"**Conversion by self-distillation** ({c.get('scale', '?')}, {c['machine'].get('gpu') or 'CPU'}): "
           f"`ksa.convert.self_distill`, {d.get('steps', '—')} steps ({d.get('joint_steps', '—')} joint) of "
           f"{d.get('batch_size', '—')} × {d.get('seq_len', '—')} tokens, {d.get('wall_s', float('nan')):.0f} s. "
           "Held-out accuracy:", "",
           "| task | model | " + " | ".join(_len(n) for n in lengths) + " |",
           "|---|---|" + "---|" * len(lengths)]
    return "\n".join(out + accuracy_rows({k: c[k]["accuracy"] for k in keys}, lengths))


def accuracy_rows(accs: dict[str, dict], lengths: list) -> list[str]:
    """Markdown rows `| task | model | accuracy at each length |`, task by task (kv, hop2, needle, count,
    all), from {model: {str(length): {task: accuracy}}}."""
    return [f"| {task} | {name} | " + " | ".join(_fmt(acc.get(str(n), {}).get(task)) for n in lengths) + " |"
            for task in ("kv", "hop2", "needle", "count", "all") for name, acc in accs.items()]


def goals_md(r: dict | None, g: dict | None, c: dict | None, long_from: int) -> str:
    out = ["**The paper's goals, checked:**", ""]
    if r:
        acc = {v: row.get("accuracy", {}) for v, row in r["variants"].items()}
        longest = str(max(s[0] for s in r["plan"]["stages"]))
        learned = {t: acc.get("full", {}).get(longest, {}).get(t) for t in ("kv", "hop2")}
        out.append(f"- full attention learned keyed retrieval at its longest training length ({longest}): "
                   + ", ".join(f"{t} {_fmt(a)}" for t, a in learned.items()))
        if max((a or 0.0) for a in learned.values()) < 0.5:
            out.append("- so the comparisons below say little about KSA: full attention did not learn the lookup")
        pairs = [(n, t, acc["ksa"][n][t], acc["sca"][n][t]) for n in acc.get("ksa", {}) if int(n) >= long_from
                 and n in acc.get("sca", {}) for t in RETRIEVAL]
        if pairs:
            held = all(k >= s for *_, k, s in pairs)
            empty = max(max(k, s) for *_, k, s in pairs) < 0.05  # nobody retrieves: the comparison is empty
            verdict = ("not decided (neither retrieves)" if empty else "yes") if held else "no"
            out.append(f"- KSA ≥ SCA on retrieval at ≥ {long_from} tokens: {verdict} ("
                       + "; ".join(f"{_len(n)} {t} {k:.2f} vs {s:.2f}" for n, t, k, s in pairs) + ")")
    if g and {"full", "ksa"} <= set(g["policies"]):
        full, ksa = (reward_change(g["policies"][p]) for p in ("full", "ksa"))
        up = [t for t, (a, b) in full.items() if b > a]
        both = [t for t in up if ksa.get(t, (0, 0))[1] > ksa.get(t, (0, 0))[0]]
        verdict = ("yes" if both == up else "no") if up else "not decided (GRPO raised no reward of the full policy)"
        out.append(f"- GRPO raised full's reward on {up or 'no task'}; KSA's rose on {both or 'none'} of them: {verdict}")
    if c and "distilled" in c:
        n = next((n for n in c["teacher"]["accuracy"] if int(n) >= long_from), list(c["teacher"]["accuracy"])[-1])
        t, s = c["teacher"]["accuracy"][n]["all"], c["distilled"]["accuracy"][n]["all"]
        out.append(f"- converted model keeps ≥ 90% of full's held-out accuracy at {n} tokens: "
                   f"{'yes' if t > 0 and s >= 0.9 * t else 'no'} ({s:.2f} vs {t:.2f}"
                   + (f", {s / t:.0%})" if t > 0 else ")"))
        kept = {k: v for k, v in c.get("kept", {}).get(n, {}).items() if k in RETRIEVAL and v is not None}
        if kept:  # ksa_conversion's distilled / teacher per task
            out.append(f"  (per retrieval task at {n}: " + ", ".join(f"{k} {v:.0%}" for k, v in kept.items()) + " kept)")
    return "\n".join(out)


# --- plots -------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    """Lay out, write (90 dpi) and close a figure; its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_replication(r: dict, path: Path) -> Path:
    """Accuracy vs length per task (a line per variant), and the train-batch kv / hop2 accuracy over
    the steps with the curriculum's stage changes."""
    plt = _plt()
    lengths = r["plan"]["eval_lengths"]
    train_max = max(s[0] for s in r["plan"]["stages"])
    panels = ("kv", "hop2", "needle", "count", "all")
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 4))
    for ax, task in zip(axes, panels, strict=False):
        for v, row in r["variants"].items():
            if row.get("accuracy"):
                ns = [n for n in lengths if str(n) in row["accuracy"]]
                ax.plot(ns, [row["accuracy"][str(n)][task] for n in ns], marker="o", label=v)
        ax.axvline(train_max, color="grey", linestyle=":", linewidth=1)
        ax.set(xscale="log", ylim=(-0.02, 1.02), title=f"held-out: {task}", xlabel="tokens")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend()
    ax = axes[-1]
    for v, row in r["variants"].items():
        steps = [s for s, _ in row.get("train_acc", [])]
        for task, style in (("kv", "-"), ("hop2", "--")):
            ax.plot(steps, [a.get(task, np.nan) for _, a in row.get("train_acc", [])], style, linewidth=1,
                    label=f"{v} {task}")
    for e in r.get("curriculum", [])[1:]:
        ax.axvline(e["step"], color="grey", linewidth=0.6)
    ax.set(ylim=(-0.02, 1.02), title="train-batch accuracy (grey: next stage)", xlabel="step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"KSA replication ({r.get('scale')}, {r['machine'].get('gpu') or 'CPU'}): full vs 3:1 hybrid KSA vs "
                 "hybrid without summaries (SCA); dotted = longest training length")
    return _save(plt, fig, path)


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the window - 1 before it (fewer at the start): a noisy per-step reward as a curve."""
    return [float(np.mean(values[max(0, i + 1 - window):i + 1])) for i in range(len(values))]


def plot_grpo(g: dict, path: Path) -> Path:
    """Per task: each step's mean reward (dots) and its trailing mean over a sixth of the steps (line);
    held-out accuracy per task before and after (bars); seconds per step."""
    plt = _plt()
    tasks = g["config"].get("tasks", TASKS)
    fig, axes = plt.subplots(1, len(tasks) + 2, figsize=(4.4 * (len(tasks) + 2), 3.8), squeeze=False)
    axes = axes[0]
    for ax, task in zip(axes, tasks, strict=False):
        for name, row in g["policies"].items():
            steps = [s["step"] for s in row["steps"]]
            reward = [s["reward"][task] for s in row["steps"]]
            window = max(1, len(reward) // 6)
            line = ax.plot(steps, trailing_mean(reward, window), label=f"{name} ({window}-step mean)")[0]
            ax.plot(steps, reward, ".", color=line.get_color(), alpha=0.35)
        ax.set(ylim=(-0.02, 1.02), title=f"mean reward: {task}", xlabel="GRPO step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[len(tasks)]
    held = [k for k in (*TASKS, "all") if k in next(iter(g["policies"].values()))["acc_before"]]
    width = 0.8 / (2 * len(g["policies"]))
    for j, (name, row) in enumerate(g["policies"].items()):
        for k, when in enumerate(("acc_before", "acc_after")):
            if when in row:
                xs = np.arange(len(held)) + (2 * j + k - len(g["policies"]) + 0.5) * width
                ax.bar(xs, [row[when][t] for t in held], width, label=f"{name} {when[4:]}",
                       alpha=0.45 if k == 0 else 0.9, color=f"C{j}")
    ax.set(xticks=np.arange(len(held)), xticklabels=held, ylim=(0, 1.02),
           title=f"held-out at {g['config']['length']} tokens")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    ax = axes[-1]
    for name, row in g["policies"].items():
        steps = [s["step"] for s in row["steps"]]
        line = ax.plot(steps, [s["step_s"] for s in row["steps"]], label=f"{name} step")[0]
        ax.plot(steps, [s["gen_s"] for s in row["steps"]], "--", color=line.get_color(), label=f"{name} generate")
    ax.set(title="seconds per step", xlabel="GRPO step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"GRPO + TMN-Reweight from the replication's policies ({g.get('scale')}, "
                 f"{g['machine'].get('gpu') or 'CPU'}, {g['config']['length']} tokens)")
    return _save(plt, fig, path)


def plot_conversion(c: dict, path: Path) -> Path:
    plt = _plt()
    keys = [k for k in ("teacher", "converted_undistilled", "distilled") if k in c]
    lengths = [int(n) for n in c["teacher"]["accuracy"]]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, task in zip(axes[:3], ("kv", "hop2", "all"), strict=True):
        for k in keys:
            ax.plot(lengths, [c[k]["accuracy"][str(n)][task] for n in lengths], marker="o", label=k)
        ax.set(ylim=(-0.02, 1.02), title=f"held-out: {task}", xlabel="tokens")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    hist = c.get("distill", {}).get("history", [])
    for part in ("kl", "ce", "mse"):
        axes[3].plot([h["step"] for h in hist], [h[part] for h in hist], label=part)
    axes[3].set(yscale="log", title="distillation loss parts", xlabel="step")
    axes[3].legend()
    fig.suptitle(f"full -> 3:1 KSA hybrid by self-distillation ({c.get('scale')}, {c['machine'].get('gpu') or 'CPU'})")
    return _save(plt, fig, path)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replication", help="ksa_replication.py's results.json")
    ap.add_argument("--grpo", help="ksa_grpo.py's results.json")
    ap.add_argument("--conversion", help="ksa_conversion.py's results.json")
    ap.add_argument("--name", default="ksa_h200", help="plot file prefix under --docs")
    ap.add_argument("--docs", default="docs", help="folder for the PNGs")
    ap.add_argument("--md", default=None, help="write the markdown here (default: print it)")
    ap.add_argument("--long-from", type=int, default=8192, help="lengths counted as long in the goal checks")
    args = ap.parse_args(argv)
    r, g, c = load(args.replication), load(args.grpo), load(args.conversion)
    if not (r or g or c):
        sys.exit("no results.json found; pass --replication/--grpo/--conversion paths that exist")
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    parts, pngs = [], []
    for data, md, draw, kind in ((r, replication_md, plot_replication, "replication"), (g, grpo_md, plot_grpo, "grpo"),
                                 (c, conversion_md, plot_conversion, "conversion")):
        if data:
            parts.append(md(data))
            pngs.append(draw(data, docs / f"{args.name}_{kind}.png"))
    parts.append(goals_md(r, g, c, args.long_from))
    text = "\n\n".join(parts) + "\n"
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(text)
    print(text)
    print("plots: " + ", ".join(map(str, pngs)))
    return text


if __name__ == "__main__":
    main()
