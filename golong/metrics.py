"""Per-step metrics: per-reward-type aggregates, JSONL / TensorBoard / W&B sinks, and a console line.

Metric names are flat, `<metric>/<reward type>` for per-reward-type values (EM, F1, ...; the key the
advantages pool by) and plain names for global ones. The key strings are those of every run so far,
so old runs still plot and summarize. Per reward type, over every response generated in the step
(all dynamic-sampling rounds, so it measures the current policy on freshly drawn prompts):

- `responses/<rt>`    responses scored;
- `reward/<rt>`       mean reward;
- `pass_rate/<rt>`    fraction of responses with reward > 0.5 (= reward == 1 for the binary rewards
                      EM / Accuracy / math; for graded rewards (F1, IoU, NDCG, ROUGE-L) "mostly right");
- `response_len/<rt>` mean response tokens;
- `adv_scale/<rt>`    mean |advantage| of the responses trained on;
- `dropped/<rt>`      groups dropped by dynamic sampling (all rewards equal);
- `reward_errors/<rt>`, `reward_timeouts/<rt>`  responses whose reward failed (scored 0);
- `truncated/<rt>`    prompts left-truncated to data.max_prompt_tokens.

Which tasks stand behind each reward type is recorded in the run's run.json (`golong.runs.note_tasks`).

With `data.skip_invalid`, `skipped_invalid_rows` is the number of invalid data rows skipped at load.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from golong.config import PASS_THRESHOLD, RecipeError


def per_reward_type(records: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Aggregate response records {reward_type, reward, length, status} into per-reward-type and overall
    metrics. The keys are `<metric>/<reward type>` (e.g. `reward/EM`) as in every earlier run."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by[r["reward_type"]].append(r)
        by["all"].append(r)
    out: dict[str, float] = {}
    # Key strings stay `<metric>/<reward type>` as every run so far logged them (reward/EM, pass_rate/F1):
    # old runs' metrics.jsonl still plot and summarize. Renaming the code's word did not rename the keys.
    for kind, rs in sorted(by.items()):
        n = len(rs)
        out[f"responses/{kind}"] = float(n)
        out[f"reward/{kind}"] = sum(r["reward"] for r in rs) / n
        out[f"pass_rate/{kind}"] = sum(r["reward"] > PASS_THRESHOLD for r in rs) / n
        out[f"response_len/{kind}"] = sum(r["length"] for r in rs) / n
        out[f"reward_errors/{kind}"] = float(sum(r["status"] == "error" for r in rs))
        out[f"reward_timeouts/{kind}"] = float(sum(r["status"] == "timeout" for r in rs))
    return out


def mean_abs_by_reward_type(reward_types: list[str], values: list[float]) -> dict[str, float]:
    """`adv_scale/<reward type>` = mean |A| over that reward type's trained responses."""
    acc: dict[str, list[float]] = defaultdict(list)
    for t, v in zip(reward_types, values, strict=True):
        acc[t].append(abs(v))
        acc["all"].append(abs(v))
    return {f"adv_scale/{t}": sum(v) / len(v) for t, v in sorted(acc.items())}


def counts(prefix: str, counter: dict[str, int], reward_types: Iterable[str]) -> dict[str, float]:
    """`<prefix>/<reward type>` for every reward type seen this step (0 when none), plus the total."""
    names = set(reward_types) | set(counter)
    out = {f"{prefix}/{t}": float(counter.get(t, 0)) for t in sorted(names)}
    out[f"{prefix}/all"] = float(sum(counter.values()))
    return out


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


class MetricsLog:
    """Writes each step's metrics to `output_dir/metrics.jsonl` and the optional sinks."""

    def __init__(self, out_dir: str | Path, *, tensorboard: bool = False, wandb: str | None = None,
                 history: list[dict[str, Any]] | None = None, config: dict[str, Any] | None = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.history: list[dict[str, Any]] = list(history or [])
        # Rewrite from the history: lines written after the last checkpoint belong to a lost future.
        self.path.write_text("".join(json.dumps(h) + "\n" for h in self.history))
        self._tb = self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RecipeError("trainer.tensorboard=true needs the tensorboard package: pip install tensorboard") from None
            self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as wb
            except ImportError:
                raise RecipeError("trainer.wandb is set but wandb is not installed: pip install wandb") from None
            self._wandb = wb.init(project=wandb, config=config, dir=str(out_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **metrics}
        self.history.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def summary_line(step: int, total: int, m: dict[str, float]) -> str:
    """One console line: step, time, global reward, and reward per reward type."""
    kinds = sorted(k.split("/", 1)[1] for k in m if k.startswith("reward/") and not k.endswith("/all"))
    per = " ".join(f"{t}={m[f'reward/{t}']:.2f}" for t in kinds)
    return (
        f"step {step}/{total}  {m.get('step_time', 0):.1f}s  reward={m.get('reward/all', 0):.3f} "
        f"pass={m.get('pass_rate/all', 0):.2f} loss={m.get('loss', 0):+.4f} "
        f"kept={int(m.get('groups_kept', 0))}  [{per}]"
    )
