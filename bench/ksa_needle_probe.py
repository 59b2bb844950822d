"""Why a trained policy misses the needle: its held-out errors by needle value, chunk offset and distance,
then whether supervised learning at GRPO's step size fixes them.

For each policy saved by bench/ksa_replication.py (`--models DIR`: DIR/full, DIR/ksa):
  1. breakdown: `--rows` single-needle prompts of `--length` tokens (a seed no training step uses), the
     greedy answer per row, accuracy grouped by the needle's value (32 classes), its offset in its chunk
     of 8 and its distance from the end, and the wrong answers counted by token; for values never answered
     right, their output-head rows against the most frequent wrong answer's (cosine, norm);
  2. supervised probe: `--steps` AdamW steps (lr `--lr`, grad-norm clip 1.0) of cross-entropy on the answer
     of `--batch` fresh single-needle rows a step, then the held-out accuracy of ksa_grpo.py again
     (the same rows as its before/after columns).
A policy whose errors are a few needle values it never outputs, at every offset and distance, has a
class-level defect, not a retrieval one; sampling G answers at temperature 1 rarely leaves such a
confident wrong class, so GRPO gets little signal from those prompts.

Run (CPU, ~15 min for both policies): PYTHONPATH=. python bench/ksa_needle_probe.py --models DIR --out OUT
Writes OUT/results.json and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ksa_grpo  # noqa: E402
import ksa_replication as rep  # noqa: E402

PROBE_SEED = 2_000_003  # breakdown rows: a stream neither training nor ksa_grpo's evaluation uses
DIST_BANDS = (0, 128, 256, 512, 1024, 2048, 4096, 8192)


def needle_answers(model, rows: int, length: int, batch: int = 64) -> dict[str, np.ndarray]:
    """Per row: the needle's text position, its value (0-31), the greedy answer token and whether it is right."""
    model.eval()
    where, value, answer = [], [], []
    for b, start in enumerate(range(0, rows, batch)):
        n = min(batch, rows - start)
        draw = rep.make_batch(np.random.default_rng([PROBE_SEED, length, b]), n, length, {"needle": 1})
        ids = torch.from_numpy(draw.ids)
        ((_, ps),) = draw.answers
        with torch.no_grad():
            pred = rep.query_logits(model, ids, draw.query_tokens, False).argmax(-1)
        answer.append(pred[:, ps[0] - (length - draw.query_tokens)].numpy())
        body = draw.ids[:, : draw.start]
        pos = np.argmax((body >= rep.NEEDLE0) & (body < rep.NEEDLE0 + rep.N_NEEDLES), axis=1)
        where.append(pos)
        value.append(body[np.arange(n), pos] - rep.NEEDLE0)
    where, value, answer = np.concatenate(where), np.concatenate(value), np.concatenate(answer)
    return {"where": where, "value": value, "answer": answer, "right": answer == value + rep.NEEDLE0}


def breakdown(res: dict[str, np.ndarray], length: int, chunk: int = 8) -> dict:
    """Accuracy by value, by chunk offset and by distance band; wrong answers by token name."""
    right, names = res["right"], rep.token_names()

    def acc(sel: np.ndarray) -> dict:
        return {"acc": round(float(right[sel].mean()), 3), "n": int(sel.sum())} if sel.any() else {"acc": None, "n": 0}

    dist = length - res["where"]
    bands = [b for b in DIST_BANDS if b < length] + [length + 1]
    return {
        "acc": round(float(right.mean()), 3),
        "by_value": {f"x{v}": acc(res["value"] == v) for v in range(rep.N_NEEDLES)},
        "by_offset": {str(o): acc(res["where"] % chunk == o) for o in range(chunk)},
        "by_distance": {f"{lo}-{hi}": acc((dist >= lo) & (dist < hi)) for lo, hi in itertools.pairwise(bands)},
        "wrong_answers": dict(Counter(names[t] for t in res["answer"][~right]).most_common(8)),
    }


def head_geometry(model, b: dict) -> dict | None:
    """The output-head rows of the values never answered right against the row of the most frequent wrong
    needle answer: mean cosine and norm, beside the same for the other values (a collapse shows as a high
    cosine and a small norm)."""
    never = [int(v[1:]) for v, a in b["by_value"].items() if a["n"] and a["acc"] == 0.0]
    wrong = [w for w in b["wrong_answers"] if w.startswith("x")]
    if not never or not wrong:
        return None
    target = int(wrong[0][1:])
    rows = model.get_output_embeddings().weight[rep.NEEDLE0 : rep.NEEDLE0 + rep.N_NEEDLES].detach().float()
    cos = torch.nn.functional.normalize(rows, dim=1) @ torch.nn.functional.normalize(rows[target], dim=0)
    rest = [v for v in range(rep.N_NEEDLES) if v not in never and v != target]
    norm = rows.norm(dim=1)
    return {"target": f"x{target}", "never": [f"x{v}" for v in never],
            "cos_never": round(float(cos[never].mean()), 3), "cos_rest": round(float(cos[rest].mean()), 3),
            "norm_never": round(float(norm[never].mean()), 3), "norm_rest": round(float(norm[rest].mean()), 3)}


def supervised_probe(model, steps: int, batch: int, length: int, lr: float, eval_rows: int) -> dict:
    """`steps` AdamW steps on the needle answer; ksa_grpo's held-out accuracy before and after."""
    before = ksa_grpo.heldout_accuracy(model, length, eval_rows, "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    curve, t0 = [], time.perf_counter()
    for step in range(steps):
        draw = rep.make_batch(np.random.default_rng([PROBE_SEED + 1, step]), batch, length, {"needle": 1})
        hits: dict = {}
        loss = rep.batch_loss(model, draw, "cpu", hits)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        curve.append({"step": step, "loss": round(loss.item(), 5), "batch_acc": float(torch.cat(hits["needle"]).float().mean())})
    after = ksa_grpo.heldout_accuracy(model, length, eval_rows, "cpu")
    return {"before": before, "after": after, "curve": curve, "train_s": round(time.perf_counter() - t0, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None, help="ksa_replication.py --save-models DIR (default: fresh random smoke models)")
    ap.add_argument("--out", default="bench/results/ksa_needle_probe")
    ap.add_argument("--policies", default="full,ksa")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--rows", type=int, default=512, help="breakdown rows")
    ap.add_argument("--steps", type=int, default=60, help="supervised steps (0: breakdown only)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4, help="the GRPO probe's step size")
    ap.add_argument("--eval-rows", type=int, default=32, help="held-out rows (ksa_grpo.py's default CPU count)")
    ap.add_argument("--threads", type=int, default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"bench": "ksa_needle_probe", "machine": rep.machine_info("cpu"), "config": vars(args), "policies": {}}
    for name in args.policies.split(","):
        shape = "default" if args.models else "smoke"
        model, _ = ksa_grpo.load_policy(args.models, name, shape, "cpu", "reference", 0)
        row = {"breakdown": breakdown(needle_answers(model, args.rows, args.length), args.length)}
        row["head"] = head_geometry(model, row["breakdown"])
        if args.steps:
            row["supervised"] = supervised_probe(model, args.steps, args.batch, args.length, args.lr, args.eval_rows)
        result["policies"][name] = row
        rep.write_json(out / "results.json", result)
    print_table(result)
    print(f"wrote {out / 'results.json'}")
    return result


def print_table(result: dict) -> None:
    for name, row in result["policies"].items():
        b = row["breakdown"]
        never = [v for v, a in b["by_value"].items() if a["n"] and a["acc"] == 0.0]
        offs = [a["acc"] for a in b["by_offset"].values() if a["n"]]
        dists = {k: a["acc"] for k, a in b["by_distance"].items() if a["n"]}
        print(f"{name:>5}  needle acc {b['acc']:.3f}  values never right: {never or 'none'}")
        print(f"       by chunk offset {min(offs):.2f}-{max(offs):.2f}; by distance {dists}; wrong answers {b['wrong_answers']}")
        if row.get("head"):
            h = row["head"]
            print(f"       output head: cos(never-right values, {h['target']}) {h['cos_never']:.2f} vs {h['cos_rest']:.2f} for the rest; "
                  f"norm {h['norm_never']:.2f} vs {h['norm_rest']:.2f}")
        if "supervised" in row:
            s = row["supervised"]
            last = s["curve"][-10:]
            print(f"       supervised {len(s['curve'])} steps: held-out needle {s['before']['needle']:.2f} -> {s['after']['needle']:.2f}, "
                  f"last-10 loss {np.mean([c['loss'] for c in last]):.4f}, batch acc {np.mean([c['batch_acc'] for c in last]):.2f}")


if __name__ == "__main__":
    main()
