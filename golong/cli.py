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


def _version(value: bool) -> None:
    if value:
        from golong import __version__

        typer.echo(f"golong {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", metavar="", callback=_version, is_eager=True,
                                 help="Print golong's version and exit."),
) -> None:
    """Long-context RL post-training."""
    import warnings

    from tasks.registry import TaskWarning

    default = warnings.showwarning

    def one_line(message, category, *args, **kwargs):  # task warnings are for users: one line, no source
        if issubclass(category, TaskWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            default(message, category, *args, **kwargs)

    warnings.showwarning = one_line


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


def _progress():
    """A rich progress bar on stderr that disappears when done (drawn only on a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)


def _user_errors() -> tuple[type[Exception], ...]:
    import rewards
    from golong.data import DataError
    from golong.rollout import EngineError
    from tasks import TaskError
    from tasks.length import LengthError
    from tasks.textgen import SplitError

    return (DataError, TaskError, LengthError, SplitError, EngineError, rewards.UnknownRouteError)


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
        rows = load_rows(src, split, keep_unreadable=True)
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
        console.print(f"[red]row {issue.number}[/red] {issue.field}: {issue.message}", markup=True, highlight=False)
    if len(report.issues) > max_issues:
        console.print(f"... and {len(report.issues) - max_issues} more problems")
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("inspect")
def data_inspect(
    src: str = typer.Argument(..., help="A .parquet/.jsonl/.json file, a folder of them, or a hub dataset id."),
    tokenizer: str = typer.Option(None, help="Tokenizer folder, hub id or built-in model name (smollm2-135m) for exact lengths (default: approximate count)."),
    split: str = typer.Option("train", help="Split to load when SRC is a hub dataset."),
) -> None:
    """Rows per task and prompt token lengths (p50 / p90 / max)."""
    from rich.table import Table

    from golong.data import length_stats, load_rows
    from golong.models import ModelLoadError, resolve_model_path
    from tasks.length import load_tokenizer

    try:
        tok = load_tokenizer(resolve_model_path(tokenizer)) if tokenizer else None
        rows = load_rows(src, split)
        with _progress() as bar:
            stats = length_stats(bar.track(rows, description="counting tokens"), tok)
    except (*_user_errors(), ModelLoadError) as e:
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
    tokenizer: str = typer.Option(None, help="Tokenizer folder, hub id or built-in model name (smollm2-135m) for exact lengths (default: approximate count)."),
    task_file: list[str] = typer.Option(None, "--task-file", help="Plug-in task path.py:Class (repeatable)."),
) -> None:
    """Generate rows of verifiable long-context problems offline, in the GoLongRL schema."""
    import tasks
    from golong.data import save_rows
    from golong.models import ModelLoadError, resolve_model_path
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
        tok = load_tokenizer(resolve_model_path(tokenizer)) if tokenizer else None
        rows: list[dict] = []
        with _progress() as bar:
            job = bar.add_task("generating rows", total=n * len(chosen))
            for t in chosen:  # in chunks, for the progress bar (row i depends only on i, not on the chunking)
                for start in range(0, n, 10):
                    rows += t.generate(min(10, n - start), target, seed=seed, split=split, tokenizer=tok, start=start)
                    bar.advance(job, min(10, n - start))
        path = save_rows(rows, output)
    except (*_user_errors(), ModelLoadError) as e:
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
    src: str = typer.Argument(..., help="Rows (GoLongRL schema) each with a 'response' string: .parquet/.jsonl/.json file, folder or hub id."),
    output: str = typer.Option(None, "-o", "--output", help="Output .jsonl/.json/.parquet (default: SRC's name with .scored.jsonl)."),
    split: str = typer.Option("train", help="Split to load when SRC is a hub dataset."),
    oracle: bool = typer.Option(
        False, "--oracle/--no-oracle", metavar="", help="Rows without 'response' are scored on a perfect answer built from the ground truth."
    ),
    pairwise_gold: bool = typer.Option(False, "--pairwise-gold/--no-pairwise-gold", metavar="", help="Opt-in fix: Pairwise divides by C(|gold|,2)."),
    rouge_on_answer: bool = typer.Option(
        False, "--rouge-on-answer/--no-rouge-on-answer", metavar="", help="Opt-in fix: ROUGE-L scores the answer after </think>, not the whole response."
    ),
    max_errors: int = typer.Option(20, help="Print at most this many bad-row messages."),
) -> None:
    """Add 'reward' and 'reward_type' to every row and print a per-reward-type summary; bad rows are skipped."""
    from pathlib import Path

    from rich.table import Table

    from golong.data import load_rows, save_rows
    from rewards.scoring import score_rows

    variant = {"pairwise_denominator": "gold"} if pairwise_gold else {}
    if rouge_on_answer:
        variant["rouge_on_answer"] = True
    local = Path(src).expanduser()
    default_out = (local.with_suffix(".scored.jsonl") if local.is_file() else
                   Path(local.name if local.is_dir() else src.replace("/", "_")).with_suffix(".scored.jsonl"))
    out = Path(output) if output else default_out
    try:
        rows = load_rows(src, split, keep_unreadable=True)
        scored, report = score_rows(rows, oracle=oracle, **variant)
        if scored:
            save_rows(scored, out)
    except _user_errors() as e:
        _fail(str(e))
    console = _console()
    for message in report.errors[:max_errors]:
        console.print(f"[red]skipped[/red] {message}", highlight=False)
    if len(report.errors) > max_errors:
        console.print(f"... and {len(report.errors) - max_errors} more skipped rows")
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
    from golong.trainer import DynamicSamplingError

    return (RecipeError, ModelLoadError, DynamicSamplingError, *_user_errors())


def _split_recipe_arg(recipe: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """`golong train --resume RUN key=value ...` has no recipe file: the first positional is an override."""
    if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        return None, [recipe, *overrides]
    return recipe, overrides


def _user_error_line(e: BaseException) -> str | None:
    """The one-line message of an error the user can fix, None for anything else (a bug: traceback).

    Errors raised inside Ray actors arrive wrapped: a failed method call carries the original
    error as `cause`; an actor whose constructor failed only has it as the last line of the remote
    traceback. Either way the user sees the original one line, not the remote traceback."""
    import re

    user = _train_errors()
    cause = getattr(e, "cause", None)
    if isinstance(cause, user):
        return str(cause)
    if isinstance(e, user) and not type(e).__module__.startswith("ray."):
        return str(e)
    if type(e).__module__.startswith("ray."):
        names = {c.__name__ for c in user} | {"KSAConfigError"}
        for line in reversed(str(e).splitlines()):
            found = re.match(r"^\s*(?:[\w.]+\.)?(\w+): (.+)$", line)
            if found and found.group(1) in names:
                return found.group(2).strip()
    return None


@app.command("train")
def train(
    recipe: str = typer.Argument(None, help="A YAML recipe, e.g. recipes/demo.yaml (optional with --resume: the run's recorded recipe is used)."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides: rollout.group_size=8 trainer.steps=20 ... (recorded in the run's recipe.yaml)."),
    dry_run: bool = typer.Option(False, "--dry-run/--no-dry-run", metavar="", help="Print the resolved recipe as YAML and exit."),
    resume: str = typer.Option(None, "--resume", help="Continue the run in this folder, with its recorded recipe (plus any overrides), from its newest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", metavar="", help="Start over in trainer.output_dir even if it holds a run (deletes that run's checkpoints and metrics)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid/--no-skip-invalid", metavar="", help="Skip and count malformed data rows (= data.skip_invalid=true)."),
) -> None:
    """GRPO training (TMN-Reweight advantages by default): rollout, reward, update, sync, log, checkpoint.

    SIGINT / SIGTERM (also during the warm start): the current step finishes, a checkpoint is saved,
    exit code 130 / 143, and the command that resumes the run is printed."""
    import shlex

    import yaml

    from golong.config import load_recipe
    from golong.runs import resume_recipe

    recipe, extra = _split_recipe_arg(recipe, list(overrides or []))
    extra += ["data.skip_invalid=true"] if skip_invalid else []
    try:
        if resume:
            cfg, ignored = resume_recipe(resume, extra, recipe)
            if ignored:
                shown = ", ".join(ignored[:4]) + (" ..." if len(ignored) > 4 else "")
                typer.echo(f"note: {recipe} differs from the recipe recorded in {resume} ({shown}); the run's recorded "
                           "recipe is used (change it with key=value overrides)", err=True)
        elif recipe is None:
            _fail("give a recipe file (e.g. golong train recipes/demo.yaml), or continue a run with --resume RUN")
        else:
            cfg = load_recipe(recipe, extra)
    except _train_errors() as e:
        _fail(str(e))
    if dry_run:
        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), nl=False)
        from golong.rollout import engine_config

        typer.echo(f"# rollout.engine {cfg.rollout.engine} builds the {engine_config(cfg).resolved} engine on this machine")
        return
    from golong.trainer import Trainer

    out = resume or cfg.trainer.output_dir
    again = f"golong train --resume {shlex.quote(str(out))}"
    trainer = _user_run(lambda: Trainer(cfg, resume=resume, overwrite=overwrite, overrides=extra),
                        lambda: f"stopped during start-up, before any training; start it with: {again}")
    # a second Ctrl-C stops at once; the newest checkpoint stays
    _user_run(trainer.run, lambda: f"stopped at once at {trainer.progress_text()}; resume from the newest "
                                   f"checkpoint with: {again}")
    console = _console()
    _print_summary(trainer, console)
    if trainer.stop_signal is not None:  # SIGINT/SIGTERM: checkpoint saved; exit 128+signal (130 / 143)
        typer.echo(f"stopped at {trainer.progress_text()}; resume with: {again}")
        raise typer.Exit(128 + trainer.stop_signal)
    typer.echo(f"done: {trainer.step} steps; metrics in {trainer.out / 'metrics.jsonl'}")


def _user_run(work, interrupted):
    """work(); Ctrl-C prints interrupted() and exits 130; an error the user can fix is one line."""
    try:
        return work()
    except KeyboardInterrupt:
        typer.echo(f"\n{interrupted()}", err=True)
        raise typer.Exit(130) from None
    except Exception as e:
        line = _user_error_line(e)
        if line is None:
            raise
        _fail(line)


def _print_summary(trainer, console) -> None:
    from golong.summary import print_run_summary

    logs = trainer.warm_logs
    if logs:
        console.print(f"warm start: {len(logs)} steps, reference-answer NLL {logs[0]['nll']:.3f} -> {logs[-1]['nll']:.3f}",
                      highlight=False)
    print_run_summary(trainer.out, console, history=trainer.log.history)


@app.command("plot")
def plot(run_dir: str = typer.Argument(..., help="A run folder (holding metrics.jsonl).")) -> None:
    """Per-task reward curves of a run, written as PNG into the run folder, and the run's summary table."""
    from golong.config import RecipeError
    from golong.plot import plot_run
    from golong.summary import print_run_summary

    try:
        paths = plot_run(run_dir)
    except RecipeError as e:
        _fail(str(e))
    print_run_summary(run_dir, _console(), plot=False)
    for p in paths:
        typer.echo(f"wrote {p}")


# -- golong eval (owner: golong/evaluate.py, golong/report.py) ------------------------------------
@app.command("eval")
def eval_cmd(
    model: list[str] = typer.Option(..., "--model", help="Model folder, learner checkpoint, run folder or built-in name (repeatable; the first is the baseline)."),
    name: list[str] = typer.Option(None, "--name", help="Display name of each --model, in order (default: the paths)."),
    data: list[str] = typer.Option(None, "--data", help="Evaluation rows: .parquet/.jsonl/.json file, folder or hub id (repeatable)."),
    split: str = typer.Option("train", help="Split to load when --data / --train-data is a hub dataset."),
    task_names: str = typer.Option("all", "--tasks", help="'all' or comma-separated task names (filters --data and --synth)."),
    synth: bool = typer.Option(False, "--synth/--no-synth", metavar="", help="Also generate held-out problems (split 'heldout', disjoint from train)."),
    lengths: str = typer.Option("4k,8k,16k,32k", help="Prompt lengths of --synth problems, comma-separated."),
    n: int = typer.Option(50, "-n", help="--synth problems per task and length."),
    seed: int = typer.Option(0, help="Seed of generated problems and of sampling."),
    tokenizer: str = typer.Option(None, help="Tokenizer for --synth lengths (default: the first model's)."),
    task_file: list[str] = typer.Option(None, "--task-file", help="Plug-in task path.py:Class (repeatable)."),
    train_data: str = typer.Option(None, "--train-data", help="Training data: evaluation rows whose prompt is in it are reported and excluded."),
    keep_overlap: bool = typer.Option(False, "--keep-overlap/--no-keep-overlap", metavar="", help="Keep evaluation rows that overlap --train-data (still reported)."),
    engine: str = typer.Option("auto", help="Generation engine: auto, static (golong's engine), loop (a transformers decode loop, any model) or vllm; hf / fast / plain are the older names."),
    greedy: bool = typer.Option(False, "--greedy/--no-greedy", metavar="", help="Greedy decoding (the default with -k 1)."),
    temperature: float = typer.Option(None, help="Sampling temperature (default: 0 = greedy with -k 1, else 1.0)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling threshold."),
    k: int = typer.Option(1, "-k", help="Samples per problem (pass@1 is averaged over them; pass@k also reported)."),
    max_new_tokens: int = typer.Option(1024, "--max-new-tokens", help="Response length limit."),
    max_prompt_tokens: int = typer.Option(None, "--max-prompt-tokens", help="Left-truncate longer prompts (default: never)."),
    pass_threshold: float = typer.Option(0.5, "--pass-threshold", help="A sample passes when reward > this (binary rewards: == 1)."),
    batch_prompts: int = typer.Option(8, "--batch-prompts", help="Problems per generation call (and per flush of responses.jsonl)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Sequences the static / loop engine decodes at once."),
    device: str = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    dtype: str = typer.Option(None, help="float32 or bfloat16 (default: bfloat16 on cuda, float32 on cpu)."),
    out: str = typer.Option("eval", "-o", "--out", help="Output folder: results.json, report.md, plots, responses.jsonl."),
    resume: bool = typer.Option(False, "--resume/--no-resume", metavar="", help="Continue OUT/responses.jsonl, skipping work already done."),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", metavar="", help="Start over even if OUT/responses.jsonl exists."),
    plots: bool = typer.Option(True, "--plots/--no-plots", metavar="", help="Write the PNG plots."),
    reward_workers: int = typer.Option(2, "--reward-workers", help="Reward worker processes (each response scored under a 30 s limit)."),
) -> None:
    """Evaluate models on held-out problems: tables per task and length, results.json, report.md, plots."""
    import tasks
    from golong.evaluate import EvalError, eval_set, evaluate, tokenizer_for_lengths
    from golong.models import resolve_model_path
    from tasks.length import load_tokenizer

    console = _console()
    errors = (EvalError, *_train_errors())
    try:
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        if dtype not in ("float32", "bfloat16"):
            raise EvalError(f"--dtype {dtype!r}: use float32 or bfloat16")
        if name and len(name) != len(model):
            raise EvalError(f"{len(name)} --name for {len(model)} --model: give one name per model or none")
        for spec in task_file or []:
            tasks.load_task_spec(spec)
        settings = _eval_settings(
            data=list(data or []), split=split, synth=synth, tasks=task_names, lengths=lengths, n=n, seed=seed,
            train_data=train_data, keep_overlap=keep_overlap, k=k, max_new_tokens=max_new_tokens, top_p=top_p,
            temperature=0.0 if greedy else (temperature if temperature is not None else (0.0 if k == 1 else 1.0)),
            batch_prompts=batch_prompts, max_prompt_tokens=max_prompt_tokens, pass_threshold=pass_threshold)
        tok = (load_tokenizer(resolve_model_path(tokenizer)) if tokenizer else tokenizer_for_lengths(model[0])) if synth else None
        items, meta = eval_set(settings, tokenizer=tok)
        if synth and tok is None:
            meta["data"] += " (lengths approximate: no tokenizer)"
        _print_overlap(console, meta.get("overlap"), train_data, keep_overlap)
        console.print(f"evaluating {len(model)} model(s) on {len(items)} problems x {k} sample(s): {meta['data']}",
                      highlight=False)
        results = evaluate(list(model), items, engine=engine, settings=settings, out_dir=out, resume=resume,
                           overwrite=overwrite, names=list(name) if name else None, meta=meta, device=device,
                           dtype=dtype, console=console, plots=plots, batch_size=batch_size,
                           reward_workers=reward_workers)
    except errors as e:
        _fail(str(e))
    _print_eval_results(console, results, out, plots)


def _eval_settings(*, tasks: str, lengths: str, synth: bool, **options):
    """The EvalSettings of `golong eval` from its options; a bad value is an EvalError naming the option."""
    from pydantic import ValidationError

    from golong.config import EvalSettings
    from golong.evaluate import EvalError
    from tasks.length import parse_length

    names = "all" if tasks.strip() == "all" else [t.strip() for t in tasks.split(",") if t.strip()]
    sizes = [parse_length(x.strip()) for x in lengths.split(",") if x.strip()] if synth else []
    try:
        return EvalSettings(tasks=names, lengths=sizes, synth=synth, **options)
    except ValidationError as e:
        first = e.errors()[0]
        option = "-k" if first["loc"][0] == "k" else "--" + str(first["loc"][0]).replace("_", "-")
        raise EvalError(f"{option}: {first['msg']} (got {first.get('input')!r})") from None


def _print_overlap(console, overlap: dict | None, train_data: str | None, kept: bool) -> None:
    if overlap and overlap["count"]:
        verb = "kept" if kept else "excluded"
        console.print(f"[yellow]{overlap['count']} evaluation rows overlap {train_data} ({verb}); "
                      f"rows {overlap['indices'][:10]}{' ...' if overlap['count'] > 10 else ''}[/yellow]")


def _print_eval_results(console, results: dict, out: str, plots: bool) -> None:
    """The tables, think-gate and reward-failure warnings, and where the files are."""
    from golong.report import print_tables

    print_tables(results, console)
    for m in results["models"]:
        st = results["summary"][m]["all"]
        if st["no_think"]:
            console.print(f"[yellow]{m}: {st['no_think']} of {st['n_samples']} responses lack exactly one </think> "
                          "and score 0 by the GoLongRL think gate[/yellow]")
        bad = st["errors"]
        if bad:
            console.print(f"[yellow]{m}: {bad} response(s) whose reward failed scored 0 (see 'error' in responses.jsonl)[/yellow]")
    typer.echo(f"wrote {out}/results.json, {out}/report.md, {out}/responses.jsonl" + (" and plots" if plots else ""))


# -- golong ksa (owner: ksa/convert.py) -----------------------------------------------------------
@ksa_app.command("convert")
def ksa_convert(
    model_dir: str = typer.Argument(..., help="A local Qwen3/Qwen2/Llama model folder (config.json + weights) or a built-in name (smollm2-135m)."),
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
    resume: bool = typer.Option(False, "--resume/--no-resume", metavar="", help="Continue from OUT/checkpoint."),
) -> None:
    """Attach Kwai Summary Attention to a model and self-distill it (teacher: the original model)."""
    from golong.models import ModelLoadError, resolve_model_path
    from ksa.config import KSAConfig, KSAConfigError
    from ksa.convert import DistillConfig, self_distill

    try:
        model_dir = resolve_model_path(model_dir)
        ksa_cfg = KSAConfig(chunk=chunk, windows=windows)
        cfg = DistillConfig(steps=steps, joint_steps=joint_steps, seq_len=seq_len, batch_size=batch_size,
                            lr_summary=lr, lr_joint=lr_joint, checkpoint_every=checkpoint_every)
        _, history = self_distill(model_dir, out, ksa_cfg, cfg, text_file=text, resume=resume, device=device)
    except (KSAConfigError, ModelLoadError, OSError) as e:
        _fail(str(e))
    last = history[-1] if history else {}
    typer.echo(f"wrote KSA model to {out} (final loss {last.get('loss', float('nan')):.4f}, kl {last.get('kl', float('nan')):.4f})")


# -- golong ksa export (owner: ksa/release.py) ----------------------------------------------------
@ksa_app.command("export")
def ksa_export(
    model_dir: str = typer.Argument(..., help="A golong KSA model folder (e.g. from 'golong ksa convert' or a checkpoint) or a release folder."),
    out: str = typer.Option(..., "-o", "--out", help="Folder for the model in the KSA release format (OpenOneRec/KSA-4B-base layout)."),
    dtype: str = typer.Option(None, "--dtype", help="Write weights as float32 or bfloat16 (default: as stored)."),
) -> None:
    """Write a KSA model in the released KSA format (config keys, appended summary rows, *_proj_summary)."""
    from ksa.config import KSAConfigError
    from ksa.release import export

    try:
        path = export(model_dir, out, dtype=dtype)
    except (KSAConfigError, OSError) as e:
        _fail(str(e))
    typer.echo(f"wrote {path} in the KSA release format")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
