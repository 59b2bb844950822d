"""Rows in the GoLongRL schema: load (local files or the hub), validate, save, and length statistics.

A row (verl RL schema, as in the released GoLongRL data):

    data_source: str                       routes the reward (EM, selection, longbench_pro, ...)
    prompt:      [{"role": str, "content": str}, ...]
    ability:     str                       the capability
    reward_model: {"style": "rule", "ground_truth": {"doc_ids": [str], "golden_label": str,
                                                      "summary": str}}
    extra_info:  {"reward_mode": str, "question": str, ...}

Local sources: a .parquet / .jsonl / .json file, or a folder holding such files (read in sorted
order, recursively). Anything else that does not exist locally is treated as a hub dataset id and
loaded with `datasets.load_dataset` (imported only then). Every command that takes data reads it
through `load_rows`.

Rows are numbered from 1 in every message ("row 1" is the first row of a parquet file, the first
non-blank line of a JSONL file); `RowIssue.index` itself is the 0-based list position.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUFFIXES = (".parquet", ".jsonl", ".json")
REQUIRED = ("data_source", "prompt", "ability", "reward_model", "extra_info")
# reward types whose gold answer is the doc_ids list / the golden_label string
LIST_GOLD = {"F1", "NDCG", "SubEM", "Pairwise", "ROUGE-L"}
LABEL_GOLD = {"EM", "Math", "IoU"}


class DataError(ValueError):
    """A data source that cannot be read or written."""


class UnreadableRow(DataError):
    """A JSONL line that is not JSON, kept in its row's place (`load_rows(..., keep_unreadable=True)`)
    so that the rows after it keep their numbers and a caller can report it and go on."""


# -- reading -----------------------------------------------------------------------------------
def _read_file(path: Path, keep_unreadable: bool = False) -> list[Any]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:
            raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    if not keep_unreadable:
                        raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg}); fix or delete line {lineno}") from None
                    rows.append(UnreadableRow(f"not valid JSON ({e.msg} at column {e.colno} of line {lineno})"))
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]} style wrappers
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json source must hold a list of rows")
        return data
    raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")


def _load_hub(dataset_id: str, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{dataset_id!r} is not a local file and the `datasets` package is not installed: "
            "pip install datasets, or pass a local .parquet/.jsonl file"
        ) from None
    from golong import hub

    if hub.offline_requested() or not hub.reachable():
        hub.go_offline()  # a cached copy loads at once; without one, the error below comes at once too
    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as e:
        raise DataError(
            f"cannot load {dataset_id!r} from the Hugging Face hub ({type(e).__name__}): the hub is unreachable "
            "or the id/split is wrong; download the data where the hub is reachable and pass a local "
            ".parquet/.jsonl file or folder"
        ) from None
    return ds.to_list()


def _looks_local(src: str) -> bool:
    return src.lower().endswith(SUFFIXES) or src.startswith((".", "/", "~")) or src.count("/") != 1


def load_rows(src: str | Path, split: str = "train", *, skip_invalid: bool | None = None,
              keep_unreadable: bool = False) -> list[dict]:
    """Rows from a local file/folder or a hub dataset id (`split` applies to hub datasets).

    keep_unreadable: a JSONL line that is not JSON becomes an `UnreadableRow` in its place instead of
    a DataError (validate and score report it and go on).

    skip_invalid: None = read as is (no validation); False = validate, and a DataError naming the
    first bad rows (index and field) if any; True = validate, drop the bad rows and report their count
    on stderr (training: `data.skip_invalid`).
    """
    path = Path(src).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"{path}: folder holds no {'/'.join(SUFFIXES)} files")
        rows = [r for f in files for r in _read_file(f, keep_unreadable)]
    elif path.is_file():
        rows = _read_file(path, keep_unreadable)
    elif _looks_local(str(src)):
        raise DataError(f"{src}: no such file or folder")
    else:
        rows = _load_hub(str(src), split)
    if skip_invalid is not None:
        rows = checked_rows(rows, str(src), skip_invalid)
    return rows


def checked_rows(rows: list[Any], src: str, skip_invalid: bool) -> list[dict]:
    """`rows` if all are valid; else a one-line DataError, or (skip_invalid) the valid ones, counted."""
    report = validate_rows(rows)
    if report.ok:
        return rows
    bad = report.bad_indices
    first = "; ".join(str(i) for i in report.issues[:3])
    if not skip_invalid:
        raise DataError(f"{src}: {len(bad)} of {len(rows)} rows are invalid ({first}); fix them, or skip and "
                        "count them with data.skip_invalid=true (golong train --skip-invalid)")
    import sys

    print(f"[golong] {src}: skipped {len(bad)} invalid rows of {len(rows)} ({first})", file=sys.stderr, flush=True)
    return report.valid_rows(rows)


# -- writing -----------------------------------------------------------------------------------
def save_rows(rows: list[dict], path: str | Path) -> Path:
    """Write rows to .jsonl, .json or .parquet (nested fields kept as lists / structs)."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: cannot write {suffix or 'a file without suffix'}; use .jsonl, .json or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            raise DataError(f"{path}: no rows to write (parquet needs at least one row for its schema)")
        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataError(f"{path}: rows have inconsistent field types for parquet ({e}); write .jsonl instead") from None
        pq.write_table(table, path)
    elif suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


# -- validation --------------------------------------------------------------------------------
@dataclass
class RowIssue:
    index: int
    field: str
    message: str

    @property
    def number(self) -> int:
        """The row's number in messages (from 1)."""
        return self.index + 1

    def __str__(self) -> str:
        return f"row {self.number}: {self.field}: {self.message}"


@dataclass
class ValidationReport:
    n_rows: int
    issues: list[RowIssue] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # valid rows per task name

    @property
    def bad_indices(self) -> list[int]:
        return sorted({i.index for i in self.issues})

    @property
    def ok(self) -> bool:
        return not self.issues

    def valid_rows(self, rows: list[dict]) -> list[dict]:
        bad = set(self.bad_indices)
        return [r for i, r in enumerate(rows) if i not in bad]


def _check_prompt(prompt: Any) -> tuple[str, str] | None:
    if not isinstance(prompt, list):
        return "prompt", f"must be a list of messages, got {type(prompt).__name__}"
    if not prompt:
        return "prompt", "empty prompt (no messages)"
    for j, msg in enumerate(prompt):
        if not isinstance(msg, dict):
            return f"prompt[{j}]", f"must be a dict with role and content, got {type(msg).__name__}"
        for key in ("role", "content"):
            if not isinstance(msg.get(key), str):
                return f"prompt[{j}].{key}", "missing or not a string"
    if not any(m["content"].strip() for m in prompt):
        return "prompt", "empty prompt (all message contents are blank)"
    return None


def _check_ground_truth(gt: Any, rtype: str | None) -> tuple[str, str] | None:
    if isinstance(gt, list) and gt:
        gt = gt[-1]  # the reference scorer takes the last element of a list
    if not isinstance(gt, dict):
        return "reward_model.ground_truth", f"must be a dict with doc_ids/golden_label/summary, got {type(gt).__name__}"
    doc_ids, label, summary = gt.get("doc_ids"), gt.get("golden_label"), gt.get("summary")
    if "doc_ids" not in gt or not isinstance(doc_ids, list):
        return "reward_model.ground_truth.doc_ids", "missing or not a list"
    if "golden_label" not in gt or not isinstance(label, str):
        return "reward_model.ground_truth.golden_label", "missing or not a string"
    if summary is not None and not isinstance(summary, str):
        return "reward_model.ground_truth.summary", "not a string"
    if rtype in LIST_GOLD or rtype == "Accuracy-lbp":
        if not doc_ids:
            return "reward_model.ground_truth.doc_ids", f"empty: a {rtype} reward needs the gold items here"
        if not all(isinstance(d, str) for d in doc_ids):
            return "reward_model.ground_truth.doc_ids", "items must be strings"
        if "summary" not in gt:
            return "reward_model.ground_truth.summary", "missing (the LongBench-Pro scorer reads it as the language)"
    if rtype in LABEL_GOLD and not label.strip():
        return "reward_model.ground_truth.golden_label", f"empty: a {rtype} reward compares against it"
    if rtype == "Accuracy" and not label.strip() and not doc_ids:
        return "reward_model.ground_truth", "no gold answer in golden_label or doc_ids"
    if rtype == "IoU":
        try:
            data = json.loads(label)
        except json.JSONDecodeError:
            return "reward_model.ground_truth.golden_label", 'IoU gold must be JSON like {"data": [[...], ...]}'
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            return "reward_model.ground_truth.golden_label", 'IoU gold must be JSON like {"data": [[...], ...]}'
    if rtype == "Pairwise" and len(set(doc_ids)) != len(doc_ids):
        return "reward_model.ground_truth.doc_ids", "duplicate items: a Pairwise score above 1 is scored 0"
    return None


def validate_row(row: Any, index: int) -> list[RowIssue]:
    """Problems of one row (empty list when the row can be scored)."""
    import rewards

    if isinstance(row, UnreadableRow):
        return [RowIssue(index, "<row>", str(row))]
    if not isinstance(row, dict):
        return [RowIssue(index, "<row>", f"must be a dict, got {type(row).__name__}")]
    issues = [RowIssue(index, key, "missing key") for key in REQUIRED if key not in row]
    if issues:
        return issues
    if not isinstance(row["data_source"], str) or not row["data_source"]:
        issues.append(RowIssue(index, "data_source", "must be a non-empty string"))
    if not isinstance(row["ability"], str):
        issues.append(RowIssue(index, "ability", f"must be a string, got {type(row['ability']).__name__}"))
    bad = _check_prompt(row["prompt"])
    if bad:
        issues.append(RowIssue(index, *bad))
    info = row["extra_info"]
    if not isinstance(info, dict):
        issues.append(RowIssue(index, "extra_info", f"must be a dict, got {type(info).__name__}"))
        info = None
    rtype = None
    if isinstance(row["data_source"], str) and row["data_source"]:
        try:
            rtype = rewards.reward_type(row["data_source"], info)
        except rewards.UnknownRouteError as e:
            where = "extra_info.reward_mode" if row["data_source"] == "longbench_pro" else "data_source"
            issues.append(RowIssue(index, where, f"unknown reward route: {e}"))
        except (KeyError, TypeError) as e:  # e.g. longbench_pro without extra_info.reward_mode
            issues.append(RowIssue(index, "extra_info.reward_mode", f"missing or invalid ({e})"))
    if rtype == "Accuracy" and row["data_source"] == "longbench_pro":
        rtype = "Accuracy-lbp"  # LongBench-Pro accuracy compares doc_ids[0]
    rm = row["reward_model"]
    if not isinstance(rm, dict) or "ground_truth" not in rm:
        issues.append(RowIssue(index, "reward_model.ground_truth", "missing (reward_model must be a dict with ground_truth)"))
    else:
        bad = _check_ground_truth(rm["ground_truth"], rtype)
        if bad:
            issues.append(RowIssue(index, *bad))
    return issues


def validate_rows(rows: list[Any]) -> ValidationReport:
    """Every problem of every row (index + field), and the number of valid rows per task."""
    from tasks import task_for_row

    report = ValidationReport(n_rows=len(rows))
    for i, row in enumerate(rows):
        issues = validate_row(row, i)
        if issues:
            report.issues.extend(issues)
            continue
        try:
            name = task_for_row(row).name
        except Exception as e:  # a route no task claims: as unusable as a malformed row
            report.issues.append(RowIssue(i, "data_source", f"no task for this row ({type(e).__name__}: {e})"[:200]))
            continue
        report.counts[name] = report.counts.get(name, 0) + 1
    return report


# -- statistics --------------------------------------------------------------------------------
def prompt_text(row: dict) -> str:
    """All message contents of a row's prompt, joined by newlines."""
    return "\n".join(str(m.get("content", "")) for m in row.get("prompt") or [] if isinstance(m, dict))


def _percentile(sorted_vals: list[int], q: float) -> int:
    """Nearest-rank percentile: the smallest value with at least q% of values <= it."""
    if not sorted_vals:
        return 0
    k = max(0, min(len(sorted_vals) - 1, -(-len(sorted_vals) * q // 100) - 1))
    return sorted_vals[int(k)]


def length_stats(rows: Iterable[dict], tokenizer: Any = None) -> dict[str, dict[str, int]]:
    """Per task: row count and prompt token length p50 / p90 / max (nearest-rank percentiles).

    tokenizer: as for `tasks.length.make_counter` (None = the approximate counter).
    """
    from tasks import task_for_row
    from tasks.length import make_counter

    counter = make_counter(tokenizer)
    by_task: dict[str, list[int]] = {}
    for row in rows:
        try:
            name = task_for_row(row).name
        except Exception:  # rows that do not route are reported by validate, counted here apart
            name = "<invalid>"
        by_task.setdefault(name, []).append(counter([prompt_text(row)])[0])
    out = {}
    for name, lens in by_task.items():
        lens.sort()
        out[name] = {"count": len(lens), "p50": _percentile(lens, 50), "p90": _percentile(lens, 90), "max": lens[-1]}
    return out
