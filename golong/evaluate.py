"""Evaluate policies on held-out problems: did training help, on which task, at which length?

    settings = EvalSettings(synth=True, lengths=["4k", "16k"], n=50, k=4, temperature=1.0)  # golong.config
    items, meta = eval_set(settings)                   # the problems (data files and/or generated ones)
    results = evaluate(["base-model", "runs/demo"], items, settings=settings, meta=meta, out_dir="eval/")

`EvalSettings` is the one settings type of an evaluation: `golong eval` builds it from its options and
the recipe's `eval:` section is it. For every model, every problem gets `k` responses; each is scored
by the row's GoLongRL reward in a `RewardPool` (worker processes with a time limit, the trainer's pool
during training) and appended to OUT/responses.jsonl (model, row id, task, length, sample index, reward, error, response)
as soon as its batch is scored, so a user can read the failures and an interrupted evaluation
resumes where it stopped (`resume=True` skips the (model, row_id, sample) triples already there).
The summary (`golong.report.summarize`) is always recomputed from that file, so results.json and
responses.jsonl cannot disagree.

A reward that raises or runs past its time limit scores 0, is recorded with its error and counted;
it never stops the evaluation. `evaluate_engine` is the same loop on an engine that already exists
(the trainer's live engine every `eval.every` steps).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from golong.config import EvalSettings
from golong.rewarding import DEFAULT_SCORE_FN, RewardPool, RewardResult, ScoreFn
from golong.rollout.base import Completion, RolloutEngine, SamplingParams

RESPONSES = "responses.jsonl"
SETTINGS = "eval_settings.json"
DEFAULT_MAX_NEW_TOKENS = 512  # EvalSettings.max_new_tokens None outside training
# An engine factory: model path -> (engine, tokenizer). "auto" / "static" / "loop" / "vllm" name the built-in ones.
EngineFactory = Callable[[str], tuple[RolloutEngine, Any]]


class EvalError(ValueError):
    """A bad evaluation request the user can fix; the message names the fix."""


# -- the problems --------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalItem:
    """One problem: a row with a stable id, its task name and its length label (tokens)."""

    id: str
    row: dict
    task: str
    length: int


def prompt_hash(row: dict) -> str:
    """sha256 of the prompt's messages, whitespace-collapsed: the same prompt in two files, same hash."""
    messages = row.get("prompt") or []
    text = "\n".join(f"{m.get('role', '')}: {' '.join(str(m.get('content', '')).split())}"
                     for m in messages if isinstance(m, dict))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def row_id(row: dict) -> str:
    """A stable id from the content that defines a problem (prompt, route, ground truth)."""
    rm = row.get("reward_model")
    key = json.dumps(
        [prompt_hash(row), row.get("data_source"), (row.get("extra_info") or {}).get("reward_mode"),
         rm.get("ground_truth") if isinstance(rm, dict) else None],
        sort_keys=True, default=str,
    )
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def length_label(row: dict) -> int:
    """A row's length for the per-length tables, in tokens.

    Generated rows carry their target (`extra_info.length`). Other rows are bucketed by their
    approximate prompt length to the next power of two times 1k: 1k, 2k, 4k, 8k, ...
    """
    info = row.get("extra_info") or {}
    if isinstance(info, dict) and isinstance(info.get("length"), int) and info["length"] > 0:
        return int(info["length"])
    from golong.data import prompt_text
    from tasks.length import approx_tokens

    tokens = max(approx_tokens(prompt_text(row)), 1)
    return 1024 * 2 ** max(0, math.ceil(math.log2(tokens / 1024)))


def task_name(row: dict) -> str:
    """The registered task a row belongs to; '<unroutable>' when its route names no reward."""
    import tasks

    try:
        return tasks.task_for_row(row).name
    except Exception:  # scored anyway: the reward records the routing error, the run goes on
        return "<unroutable>"


def make_items(rows: Iterable[dict], task_names: list[str] | None = None) -> list[EvalItem]:
    """EvalItems for `rows` (only those of `task_names` when given), ids made unique in order."""
    wanted = _resolve_task_names(task_names)
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for row in rows:
        task = task_name(row)
        if wanted is not None and task not in wanted:
            continue
        base = row_id(row)
        seen[base] = seen.get(base, 0) + 1
        rid = base if seen[base] == 1 else f"{base}-{seen[base]}"  # exact duplicate rows stay apart
        items.append(EvalItem(rid, row, task, length_label(row)))
    return items


def _resolve_task_names(task_names: list[str] | None) -> set[str] | None:
    if not task_names or task_names == ["all"]:
        return None
    import tasks

    return {tasks.get_task(n).name for n in task_names}


def heldout_rows(task_names: list[str], lengths: list[int | str], n: int, *, seed: int = 0,
                 tokenizer: Any = None) -> list[dict]:
    """n generated problems per task and length from the `heldout` split (disjoint from `train`)."""
    import tasks

    chosen = tasks.all_tasks() if not task_names or task_names == ["all"] else [tasks.get_task(t) for t in task_names]
    return [row for length in lengths for t in chosen
            for row in t.generate(n, length, seed=seed, split="heldout", tokenizer=tokenizer)]


@dataclass
class Overlap:
    """Evaluation rows whose prompt also appears in the training data."""

    indices: list[int]  # positions in the evaluation rows
    ids: list[str]
    kept: bool

    def as_dict(self) -> dict[str, Any]:
        return {"count": len(self.indices), "indices": self.indices, "row_ids": self.ids, "kept": self.kept}


def drop_overlap(rows: list[dict], train_rows: Iterable[dict], keep: bool = False) -> tuple[list[dict], Overlap]:
    """Find rows whose prompt hash is in `train_rows`; drop them unless `keep`."""
    train = {prompt_hash(r) for r in train_rows}
    hit = [i for i, r in enumerate(rows) if prompt_hash(r) in train]
    overlap = Overlap(hit, [row_id(rows[i]) for i in hit], keep)
    if keep or not hit:
        return rows, overlap
    bad = set(hit)
    return [r for i, r in enumerate(rows) if i not in bad], overlap


def eval_set(settings: EvalSettings, tokenizer: Any = None) -> tuple[list[EvalItem], dict[str, Any]]:
    """The problems of one evaluation (`settings.data` rows and/or generated held-out ones) and a
    description of them.

    data: files / folders / hub ids read by `golong.data.load_rows`; synth (None: when no data is given):
    also generate `n` held-out problems per task and length. Rows whose prompt is in `train_data` are
    reported and dropped (kept with `keep_overlap`); their indices count data rows first, then generated
    ones. `tasks` filters both.
    """
    from golong.data import load_rows

    synth = settings.synth if settings.synth is not None else not settings.data
    if not settings.data and not synth:
        raise EvalError("nothing to evaluate on: give --data FILE|HUB_ID and/or --synth --lengths 4k,8k")
    rows: list[dict] = []
    described = []
    for src in settings.data:
        got = load_rows(src, settings.split)
        described.append(f"{src} ({len(got)} rows)")
        rows += got
    if synth:
        if not settings.lengths:
            raise EvalError("--synth needs --lengths, e.g. --lengths 4k,8k,16k")
        gen = heldout_rows(settings.task_names() or ["all"], settings.lengths, settings.n, seed=settings.seed,
                           tokenizer=tokenizer)
        described.append(f"{len(gen)} generated held-out problems (seed {settings.seed}, "
                         f"lengths {', '.join(map(str, settings.lengths))})")
        rows += gen
    overlap = None
    if settings.train_data:  # generated held-out rows are disjoint by construction; checked all the same
        rows, overlap = drop_overlap(rows, load_rows(settings.train_data, settings.split), keep=settings.keep_overlap)
    items = make_items(rows, settings.task_names())
    if not items:
        raise EvalError("no evaluation rows left: check --data / --synth and --tasks")
    meta: dict[str, Any] = {"data": "; ".join(described)}
    if overlap is not None:
        meta["overlap"] = {**overlap.as_dict(), "train_data": settings.train_data}
    return items, meta


def tokenizer_for_lengths(model_path: str) -> Any:
    """The first model's tokenizer, so generated prompt lengths are in its tokens; None if unavailable."""
    from golong.models import resolve_model_path

    try:
        folder = resolve_checkpoint(resolve_model_path(model_path))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)
    except Exception:  # approximate lengths are still a fair, shared axis for every model
        return None


# -- the response log ------------------------------------------------------------------------------
class ResponseLog:
    """OUT/responses.jsonl, appended one batch at a time and flushed to disk after each batch.

    Reading tolerates a torn last line (a run killed mid-write); a duplicate (model, row_id, sample)
    keeps its first record.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out, seen = [], set()
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                key = (rec["model"], rec["row_id"], int(rec["sample"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a torn line from an interrupted write: that work is simply redone
            if key not in seen:
                seen.add(key)
                out.append(rec)
        return out

    def append(self, records: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair = self.path.is_file() and self.path.stat().st_size > 0 and not self._ends_with_newline()
        with self.path.open("a", encoding="utf-8") as f:
            if repair:  # a torn last line must not swallow the first new record
                f.write("\n")
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


# -- generating and scoring --------------------------------------------------------------------------
def prepare_settings(settings: EvalSettings | None, k: int | None = None,
                     sampling: SamplingParams | None = None) -> EvalSettings:
    """`settings` (default `EvalSettings()`) with k and the sampling fields of `sampling` (top_k is not
    used in evaluation), its limits left to the recipe in training given their stand-alone values,
    checked."""
    update: dict[str, Any] = {} if k is None else {"k": k}
    if sampling is not None:
        update.update(max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                      top_p=sampling.top_p, seed=sampling.seed)
    settings = (settings or EvalSettings()).model_copy(update=update)
    if settings.max_new_tokens is None:
        settings = settings.model_copy(update={"max_new_tokens": DEFAULT_MAX_NEW_TOKENS})
    if settings.top_p is None:
        settings = settings.model_copy(update={"top_p": 1.0})
    check_settings(settings)
    return settings


def check_settings(settings: EvalSettings) -> None:
    if settings.k < 1:
        raise EvalError(f"-k must be >= 1, got {settings.k}")
    if settings.k > 1 and settings.temperature == 0:
        raise EvalError(f"-k {settings.k} with greedy decoding gives {settings.k} identical responses; "
                        "set --temperature (e.g. 1.0) or use -k 1")
    if settings.max_new_tokens < 1 or settings.batch_prompts < 1:
        raise EvalError("--max-new-tokens and --batch-prompts must be >= 1")


def batch_sampling(settings: EvalSettings, batch_index: int) -> SamplingParams:
    """A batch's sampling parameters; its seed depends only on (seed, batch index)."""
    return SamplingParams(settings.max_new_tokens, settings.temperature, settings.top_p, 0,
                          seed=settings.seed * 1_000_003 + batch_index)


def batches(items: list[EvalItem], size: int) -> list[list[EvalItem]]:
    """Fixed batches (same for every model and every resumption): items ordered by length, task, id."""
    ordered = sorted(items, key=lambda it: (it.length, it.task, it.id))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def reward_pool(score_fn: ScoreFn | None = None, timeout_s: float = 30.0, workers: int = 2) -> RewardPool:
    """The pool an evaluation scores in when it is given none: worker processes for the built-in reward
    or a 'module:function' name; the caller's thread (still under the time limit) for a function object,
    which need not survive the trip to a worker."""
    fn = score_fn or DEFAULT_SCORE_FN
    return RewardPool(workers, timeout_s, mode="thread" if callable(fn) else "process", score_fn=fn)


def _reward_type(row: dict) -> str:
    import rewards

    try:
        return rewards.row_reward_type(row)
    except Exception:
        return "<unroutable>"


def _record(model: str, it: EvalItem, sample: int, comp: Completion, prompt: tuple[list[int], bool],
            res: RewardResult, settings: EvalSettings) -> dict:
    """One line of responses.jsonl."""
    from rewards.parsing import passes_think_gate

    error = None if res.status == "ok" else f"{res.status}: {res.message}"
    return {
        "model": model, "row_id": it.id, "task": it.task, "reward_type": _reward_type(it.row),
        "length": it.length, "sample": sample, "reward": res.score,
        "passed": res.score > settings.pass_threshold, "error": error,
        "think_ok": passes_think_gate(comp.text),
        "finish_reason": comp.finish_reason, "prompt_tokens": len(prompt[0]), "prompt_truncated": prompt[1],
        "response_tokens": len(comp.response_ids), "response": comp.text,
    }


def run_batch(engine: Any, tokenizer: Any, todo: list[EvalItem], model: str, settings: EvalSettings,
              batch_index: int, rewards: RewardPool, done: dict[tuple[str, str], set[int]]) -> list[dict]:
    """Generate the batch's responses and score the samples not yet in `done` in the reward pool."""
    from golong.mixture import encode_prompt

    prompts = [encode_prompt(tokenizer, it.row, settings.max_prompt_tokens) for it in todo]
    groups = engine.generate([ids for ids, _ in prompts], settings.k, batch_sampling(settings, batch_index))
    todo_samples = [(it, prompt, s, comp) for it, prompt, group in zip(todo, prompts, groups, strict=True)
                    for s, comp in enumerate(group) if s not in done.get((model, it.id), set())]
    results = rewards.score([it.row for it, *_ in todo_samples], [comp.text for *_, comp in todo_samples],
                            variant=settings.variant)
    return [_record(model, it, s, comp, prompt, res, settings)
            for (it, prompt, s, comp), res in zip(todo_samples, results, strict=True)]


def run_model(engine: Any, tokenizer: Any, items: list[EvalItem], model: str, settings: EvalSettings,
              rewards: RewardPool, *, done: dict[tuple[str, str], set[int]] | None = None,
              sink: Callable[[list[dict]], None] | None = None,
              progress: Callable[[int], None] | None = None) -> list[dict]:
    """Generate and score every (item, sample) of `model` not in `done`; return the new records.

    `engine` is anything with `generate(prompts_ids, n, SamplingParams)` (a RolloutEngine, or the
    trainer's cluster); `rewards` scores them (its time limit; a failure scores 0 and is recorded). Each
    batch's records go to `sink` (the response log) as soon as scored.
    """
    done = done or {}
    out: list[dict] = []
    for b, batch in enumerate(batches(items, settings.batch_prompts)):
        todo = [it for it in batch if len(done.get((model, it.id), ())) < settings.k]
        if not todo:
            continue
        records = run_batch(engine, tokenizer, todo, model, settings, b, rewards, done)
        if sink is not None:
            sink(records)
        out.extend(records)
        if progress is not None:
            progress(len(todo))
    return out


def evaluate_engine(engine: Any, tokenizer: Any, rows: list[dict] | list[EvalItem], *, model: str = "policy",
                    k: int | None = None, sampling: SamplingParams | None = None,
                    settings: EvalSettings | None = None, out_dir: str | Path | None = None,
                    rewards: RewardPool | None = None, score_fn: ScoreFn | None = None,
                    reward_timeout_s: float = 30.0) -> dict[str, Any]:
    """Evaluate one live engine (e.g. the trainer's, mid-run) on `rows`; the results dict.

    Responses are scored in `rewards` (the trainer's pool), or in a pool of `reward_pool(score_fn,
    reward_timeout_s)` made for the call. With `out_dir`, responses are written to OUT/responses.jsonl
    (a previous file there is replaced) and results.json is written; no plots, so it stays cheap
    enough to call every N training steps.
    """
    from golong.report import summarize, write_results

    settings = prepare_settings(settings, k, sampling)
    items = rows if rows and isinstance(rows[0], EvalItem) else make_items(rows)  # type: ignore[arg-type]
    log = ResponseLog(Path(out_dir) / RESPONSES) if out_dir else None
    if log is not None and log.path.is_file():
        log.path.unlink()  # a re-run of the same step (a resumed training run) starts this folder over
    pool = rewards or reward_pool(score_fn, reward_timeout_s)
    try:
        records = run_model(engine, tokenizer, items, model, settings, pool, sink=log.append if log else None)
    finally:
        if rewards is None:
            pool.close()
    results = summarize(records, [model], settings.resume_key())
    if out_dir:
        write_results(results, Path(out_dir))
    return results


# -- loading models ----------------------------------------------------------------------------------
def resolve_checkpoint(path: str) -> str:
    """A model folder from what a user may point at.

    Accepted: a transformers model folder; a learner checkpoint (`.../learner`, holding `model/`);
    a run checkpoint (`.../checkpoints/step_N`); a run folder (its newest checkpoint); a built-in
    model name; anything else is passed on to from_pretrained as is.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        return path
    if (p / "config.json").is_file() or (p / "adapter_config.json").is_file():
        return str(p)
    for sub in ("model", "learner/model"):
        if (p / sub / "config.json").is_file() or (p / sub / "adapter_config.json").is_file():
            return str(p / sub)
    if (p / "checkpoints").is_dir():
        from golong import checkpoint

        ckpts = checkpoint.list_checkpoints(p)
        if not ckpts:
            raise EvalError(f"{path}: run folder without a complete checkpoint in {p / 'checkpoints'}")
        return resolve_checkpoint(str(ckpts[-1]))
    raise EvalError(f"{path}: not a model folder (no config.json), learner checkpoint or run folder")


def load_model(path: str, *, device: str | None = None, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) for evaluation; a LoRA adapter folder is loaded onto its base and merged.

    KSA checkpoints load through `golong.models.load_policy`, which imports `ksa` for them.
    """
    from golong.config import ModelConfig
    from golong.models import load_policy

    folder = resolve_checkpoint(path)
    adapter = Path(folder) / "adapter_config.json"
    if adapter.is_file() and not (Path(folder) / "config.json").is_file():
        from peft import PeftModel

        base_path = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if not base_path:
            raise EvalError(f"{folder}: LoRA adapter without base_model_name_or_path; merge it first")
        model, tokenizer = load_policy(ModelConfig(path=base_path, dtype=dtype), device=device)
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
        return model, tokenizer
    return load_policy(ModelConfig(path=folder, dtype=dtype), device=device)


def default_engine_factory(name: str = "auto", *, device: str | None = None, dtype: str = "float32",
                           batch_size: int = 32) -> EngineFactory:
    """model path -> (engine, tokenizer) through `golong.rollout.make_engine`."""
    from golong.rollout import EngineConfig, check_available, engine_name, make_engine
    from ksa import is_ksa

    name = engine_name(name)

    def build(path: str) -> tuple[RolloutEngine, Any]:
        if name == "vllm":  # fail before loading any weights
            check_available(name)
        model, tokenizer = load_model(path, device=device, dtype=dtype)
        config = EngineConfig(name, ksa=is_ksa(model.config), batch_size=batch_size, device=device)
        return make_engine(config, model, tokenizer), tokenizer

    return build


def _release_memory() -> None:
    """Return a finished model's memory before the next model loads."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- the whole evaluation ----------------------------------------------------------------------------
def open_output(out_dir: Path, settings: EvalSettings, resume: bool, overwrite: bool, meta: dict[str, Any]) -> ResponseLog:
    """Prepare OUT: a fresh folder, or (resume) one whose saved settings equal these."""
    log = ResponseLog(out_dir / RESPONSES)
    saved = out_dir / SETTINGS
    if resume and saved.is_file():
        old = json.loads(saved.read_text())
        new = json.loads(json.dumps(settings.resume_key()))
        changed = sorted(k for k in set(old["settings"]) | set(new) if old["settings"].get(k) != new.get(k))
        if changed:
            key = changed[0]
            raise EvalError(f"--resume {out_dir}: setting {key!r} was {old['settings'].get(key)!r}, now "
                            f"{new.get(key)!r}; use the same settings or a new -o folder")
        return log
    if log.path.is_file() and not resume:
        if not overwrite:
            raise EvalError(f"{log.path} exists: pass --resume to continue it, --overwrite to start over, "
                            "or choose another -o folder")
        log.path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"settings": settings.resume_key(), **meta}, indent=2, default=str))
    return log


def evaluate(models: list[str], rows: list[dict] | list[EvalItem], *, engine: str | EngineFactory = "auto",
             k: int | None = None, sampling: SamplingParams | None = None, settings: EvalSettings | None = None,
             out_dir: str | Path = "eval", resume: bool = False, overwrite: bool = False,
             names: list[str] | None = None, meta: dict[str, Any] | None = None,
             rewards: RewardPool | None = None, score_fn: ScoreFn | None = None, reward_timeout_s: float = 30.0,
             reward_workers: int = 2, device: str | None = None, dtype: str = "float32", batch_size: int = 32,
             console: Any = None, plots: bool = True) -> dict[str, Any]:
    """Evaluate every model on `rows`; write responses.jsonl, results.json, report.md and plots.

    engine: 'auto' | 'static' | 'loop' | 'vllm' (golong/rollout/__init__.py), or a factory `model path -> (engine, tokenizer)`.
    k, sampling: samples per problem and how to draw them (max_new_tokens, temperature, top_p, seed);
        shorthands that override the matching fields of `settings` (batching, truncation, pass threshold).
    names: display names of the models (default: the paths as given).
    rewards: the pool to score in; default `reward_pool(score_fn, reward_timeout_s, reward_workers)`,
        started before the first model loads and closed at the end.
    Returns the results dict (`golong.report.summarize`), also written to OUT/results.json.
    """
    from golong.report import summarize, write_report

    if not models:
        raise EvalError("give at least one --model")
    settings = prepare_settings(settings, k, sampling)
    names = names or list(models)
    if len(set(names)) != len(names):
        raise EvalError(f"model names must differ, got {names}")
    items = rows if rows and isinstance(rows[0], EvalItem) else make_items(rows)  # type: ignore[arg-type]
    if not items:
        raise EvalError("no evaluation rows: check --data / --synth and --tasks")
    out = Path(out_dir)
    meta = {"model_paths": dict(zip(names, models, strict=True)), **(meta or {})}
    log = open_output(out, settings, resume, overwrite, meta)
    factory = default_engine_factory(engine, device=device, dtype=dtype, batch_size=batch_size) if isinstance(engine, str) else engine
    pool = rewards or reward_pool(score_fn, reward_timeout_s, reward_workers)
    try:
        pool.start()  # fork the reward workers before any model is loaded
        _run_models(dict(zip(names, models, strict=True)), factory, items, settings, pool, log, console)
    finally:
        if rewards is None:
            pool.close()
    wanted = {it.id for it in items}
    records = [r for r in log.read() if r["model"] in names and r["row_id"] in wanted and r["sample"] < settings.k]
    results = summarize(records, names, settings.resume_key(), extra=meta)
    write_report(results, out, plots=plots)
    return results


def _run_models(models: dict[str, str], factory: EngineFactory, items: list[EvalItem], settings: EvalSettings,
                rewards: RewardPool, log: ResponseLog, console: Any) -> None:
    """Load each model {name: path} in turn and run what the log does not hold yet."""
    wanted = {it.id for it in items}
    done: dict[tuple[str, str], set[int]] = {}
    for rec in log.read():
        if rec["row_id"] in wanted and 0 <= int(rec["sample"]) < settings.k:
            done.setdefault((rec["model"], rec["row_id"]), set()).add(int(rec["sample"]))
    for name, path in models.items():
        pending = sum(len(done.get((name, it.id), ())) < settings.k for it in items)
        if pending == 0:
            _say(console, f"{name}: all {len(items)} problems already done")
            continue
        _say(console, f"{name}: loading {path}")
        eng, tokenizer = factory(path)
        with _progress(console, name, pending) as advance:
            run_model(eng, tokenizer, items, name, settings, rewards, done=done, sink=log.append, progress=advance)
        del eng, tokenizer
        _release_memory()


def _say(console: Any, text: str) -> None:
    if console is not None:
        console.print(text, highlight=False)


@contextmanager
def _progress(console: Any, name: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over problems when a console is given, else nothing."""
    if console is None:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task(name, total=total)
        yield lambda n: bar.advance(task, n)
