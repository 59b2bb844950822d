"""The `golong` command line.

Each command is a thin wrapper: it parses arguments and calls into the module that owns the
work, importing it lazily so `golong --help` stays fast and heavy packages load only when used.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Long-context RL post-training.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect, validate and generate data in the GoLongRL schema.")
rewards_app = typer.Typer(no_args_is_help=True, help="Score responses with the GoLongRL rewards.")
tasks_app = typer.Typer(no_args_is_help=True, help="List the tasks golong knows.")
ksa_app = typer.Typer(no_args_is_help=True, help="Kwai Summary Attention: convert and export models.")
app.add_typer(data_app, name="data")
app.add_typer(rewards_app, name="rewards")
app.add_typer(tasks_app, name="tasks")
app.add_typer(ksa_app, name="ksa")


# -- golong data / golong tasks (owner: golong/data.py, tasks/) -----------------------------------
def _fail(message: str) -> None:
    """Print a one-line error and exit 1 (user errors never show a traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _console():
    """A rich console; when output is not a terminal (pipes, tests) use wide lines, not ellipses."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _user_errors() -> tuple[type[Exception], ...]:
    import rewards
    from golong.data import DataError
    from tasks import TaskError
    from tasks.length import LengthError
    from tasks.textgen import SplitError

    return (DataError, TaskError, LengthError, SplitError, rewards.UnknownRouteError)


@data_app.command("validate")
def data_validate(
    src: str = typer.Argument(..., help="A .parquet/.jsonl/.json file, a folder of them, or a hub dataset id."),
    split: str = typer.Option("train", help="Split to load when SRC is a hub dataset."),
    max_issues: int = typer.Option(50, help="Print at most this many problems."),
) -> None:
    """Check every row against the GoLongRL schema and reward routes; exit 1 if any row is bad."""
    from rich.table import Table

    from golong.data import load_rows, validate_rows

    try:
        rows = load_rows(src, split)
        report = validate_rows(rows)
    except _user_errors() as e:
        _fail(str(e))
    console = _console()
    table = Table(title=f"{src}: {report.n_rows} rows")
    table.add_column("task")
    table.add_column("valid rows", justify="right")
    for name, count in sorted(report.counts.items()):
        table.add_row(name, str(count))
    table.add_row("[red]invalid[/red]", str(len(report.bad_indices)))
    console.print(table)
    for issue in report.issues[:max_issues]:
        console.print(f"[red]row {issue.index}[/red] {issue.field}: {issue.message}", markup=True, highlight=False)
    if len(report.issues) > max_issues:
        console.print(f"... and {len(report.issues) - max_issues} more problems")
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("inspect")
def data_inspect(
    src: str = typer.Argument(..., help="A .parquet/.jsonl/.json file, a folder of them, or a hub dataset id."),
    tokenizer: str = typer.Option(None, help="Tokenizer folder for exact lengths (default: approximate count)."),
    split: str = typer.Option("train", help="Split to load when SRC is a hub dataset."),
) -> None:
    """Rows per task and prompt token lengths (p50 / p90 / max)."""
    from rich.table import Table

    from golong.data import length_stats, load_rows

    try:
        stats = length_stats(load_rows(src, split), tokenizer)
    except _user_errors() as e:
        _fail(str(e))
    unit = "tokens" if tokenizer else "tokens, approximate"
    table = Table(title=f"{src} ({unit})")
    for col in ("task", "rows", "p50", "p90", "max"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for name, s in sorted(stats.items()):
        table.add_row(name, str(s["count"]), str(s["p50"]), str(s["p90"]), str(s["max"]))
    _console().print(table)


@data_app.command("synth")
def data_synth(
    output: str = typer.Option(..., "-o", "--output", help="Output file: .jsonl, .json or .parquet."),
    task_names: str = typer.Option(
        None, "--tasks", help="'all' or comma-separated task names (default: all, or only the --task-file tasks)."
    ),
    length: str = typer.Option("8k", help="Target prompt length in tokens: 2k, 8k, 128k, 32768 ..."),
    n: int = typer.Option(100, "-n", help="Rows per task."),
    seed: int = typer.Option(0, help="Seed; the same seed gives the same rows."),
    split: str = typer.Option("train", help="'train' or 'heldout' (disjoint problems)."),
    tokenizer: str = typer.Option(None, help="Tokenizer folder for exact lengths (default: approximate count)."),
    task_file: list[str] = typer.Option(None, "--task-file", help="Plug-in task path.py:Class (repeatable)."),
) -> None:
    """Generate rows of verifiable long-context problems offline, in the GoLongRL schema."""
    import tasks
    from golong.data import save_rows
    from tasks.length import load_tokenizer, parse_length

    try:
        target = parse_length(length)
        plugins = [tasks.load_task_spec(spec) for spec in task_file or []]
        if task_names is None:
            chosen = plugins or tasks.all_tasks()
        elif task_names.strip() == "all":
            chosen = tasks.all_tasks()
        else:
            chosen = [tasks.get_task(name.strip()) for name in task_names.split(",") if name.strip()]
        tok = load_tokenizer(tokenizer) if tokenizer else None
        rows = [row for t in chosen for row in t.generate(n, target, seed=seed, split=split, tokenizer=tok)]
        path = save_rows(rows, output)
    except _user_errors() as e:
        _fail(str(e))
    typer.echo(f"wrote {len(rows)} rows ({len(chosen)} tasks x {n}, {target} tokens, split {split}) to {path}")


@tasks_app.command("list")
def tasks_list(
    task_file: list[str] = typer.Option(None, "--task-file", help="Also load a plug-in task path.py:Class."),
) -> None:
    """The registered tasks: name, capability, reward type and where they come from."""
    from rich.table import Table

    import tasks

    try:
        for spec in task_file or []:
            tasks.load_task_spec(spec)
        rows = tasks.all_tasks()
    except _user_errors() as e:
        _fail(str(e))
    table = Table(title="golong tasks")
    for col in ("name", "capability", "reward", "route", "source"):
        table.add_column(col)
    for t in rows:
        route = t.data_source if t.reward_mode == t.data_source else f"{t.data_source} / {t.reward_mode}"
        table.add_row(t.name, t.capability, t.reward_type, route, t.source)
    _console().print(table)


# -- golong rewards (owner: rewards/) -------------------------------------------------------------
@rewards_app.command("score")
def rewards_score(
    src: str = typer.Argument(..., help="JSONL: dataset rows (GoLongRL schema) each with a 'response' string."),
    output: str = typer.Option(None, "-o", "--output", help="Output JSONL (default: SRC with .scored.jsonl)."),
    oracle: bool = typer.Option(
        False, "--oracle", help="Rows without 'response' are scored on a perfect answer built from the ground truth."
    ),
    pairwise_gold: bool = typer.Option(False, "--pairwise-gold", help="Opt-in fix: Pairwise divides by C(|gold|,2)."),
    rouge_on_answer: bool = typer.Option(
        False, "--rouge-on-answer", help="Opt-in fix: ROUGE-L scores the answer after </think>, not the whole response."
    ),
    max_errors: int = typer.Option(20, help="Print at most this many bad-line messages."),
) -> None:
    """Add 'reward' and 'reward_type' to every row and print a per-task summary; bad lines are skipped."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from rewards.scoring import score_jsonl

    src_path = Path(src)
    if not src_path.is_file():
        _fail(f"{src}: no such file")
    out = Path(output) if output else src_path.with_suffix(".scored.jsonl")
    variant = {"pairwise_denominator": "gold"} if pairwise_gold else {}
    if rouge_on_answer:
        variant["rouge_on_answer"] = True
    report = score_jsonl(src_path, out, oracle=oracle, **variant)
    console = Console()
    for message in report.errors[:max_errors]:
        console.print(f"[red]skipped[/red] {message}", highlight=False)
    if len(report.errors) > max_errors:
        console.print(f"... and {len(report.errors) - max_errors} more skipped lines")
    table = Table(title=f"{src}: {report.scored} scored, {len(report.errors)} skipped")
    for col in ("reward type", "rows", "mean reward", "share > 0"):
        table.add_column(col, justify="left" if col == "reward type" else "right")
    for kind, stats in report.ordered():
        table.add_row(kind, str(stats.count), f"{stats.mean:.4f}", f"{stats.share_positive:.2%}")
    console.print(table)
    if report.scored == 0:
        _fail(f"no row of {src} could be scored")
    typer.echo(f"wrote {report.scored} scored rows to {out}")


# -- golong train / golong plot (owner: golong/trainer.py, golong/plot.py) ---------------------------
def _train_errors() -> tuple[type[Exception], ...]:
    from golong.config import RecipeError
    from golong.models import ModelLoadError

    return (RecipeError, ModelLoadError, *_user_errors())


@app.command("train")
def train(
    recipe: str = typer.Argument(..., help="A YAML recipe, e.g. recipes/demo.yaml."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides: rollout.group_size=8 trainer.steps=20 ..."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe as YAML and exit."),
    resume: str = typer.Option(None, "--resume", help="Continue the run in this folder from its newest checkpoint."),
) -> None:
    """GRPO training (TMN-Reweight advantages by default): rollout, reward, update, sync, log, checkpoint."""
    import yaml

    from golong.config import load_recipe

    try:
        cfg = load_recipe(recipe, overrides or [])
    except _train_errors() as e:
        _fail(str(e))
    if dry_run:
        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), nl=False)
        return
    from golong.trainer import Trainer

    try:
        trainer = Trainer(cfg, resume=resume)
    except _train_errors() as e:
        _fail(str(e))
    trainer.run()
    typer.echo(f"done: {trainer.step} steps; metrics in {trainer.out / 'metrics.jsonl'}")


@app.command("plot")
def plot(run_dir: str = typer.Argument(..., help="A run folder (holding metrics.jsonl).")) -> None:
    """Per-task reward curves of a run, written as PNG into the run folder."""
    from golong.config import RecipeError
    from golong.plot import plot_run

    try:
        paths = plot_run(run_dir)
    except RecipeError as e:
        _fail(str(e))
    for p in paths:
        typer.echo(f"wrote {p}")


# -- golong ksa (owner: ksa/convert.py) -----------------------------------------------------------
@ksa_app.command("convert")
def ksa_convert(
    model_dir: str = typer.Argument(..., help="A local Qwen3/Qwen2/Llama model folder (config.json + weights)."),
    out: str = typer.Option(..., "-o", "--out", help="Folder for the KSA model, tokenizer and checkpoints."),
    text: str = typer.Option(None, "--text", help="A UTF-8 text file to distill on (default: procedural text)."),
    steps: int = typer.Option(200, "--steps", help="Optimizer steps in total (summary-only, then joint)."),
    joint_steps: int = typer.Option(None, "--joint-steps", help="Steps of the joint stage (default: steps // 4)."),
    seq_len: int = typer.Option(512, "--seq-len", help="Text tokens per training sequence."),
    batch_size: int = typer.Option(2, "--batch-size", help="Sequences per step."),
    windows: str = typer.Option(None, "--windows", help="Per-layer windows in chunks, e.g. '([128]*3+[16768])*9' (default: 3:1 hybrid, 128)."),
    chunk: int = typer.Option(8, "--chunk", help="Text tokens per chunk."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate of the summary-only stage."),
    lr_joint: float = typer.Option(1e-5, "--lr-joint", help="Learning rate of the joint stage."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="Write a resumable checkpoint every N steps."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint."),
) -> None:
    """Attach Kwai Summary Attention to a model and self-distill it (teacher: the original model)."""
    from ksa.config import KSAConfig, KSAConfigError
    from ksa.convert import DistillConfig, self_distill

    try:
        ksa_cfg = KSAConfig(chunk=chunk, windows=windows)
        cfg = DistillConfig(steps=steps, joint_steps=joint_steps, seq_len=seq_len, batch_size=batch_size,
                            lr_summary=lr, lr_joint=lr_joint, checkpoint_every=checkpoint_every)
        _, history = self_distill(model_dir, out, ksa_cfg, cfg, text_file=text, resume=resume, device=device)
    except (KSAConfigError, OSError) as e:
        _fail(str(e))
    last = history[-1] if history else {}
    typer.echo(f"wrote KSA model to {out} (final loss {last.get('loss', float('nan')):.4f}, kl {last.get('kl', float('nan')):.4f})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
