"""Throwaway probe 2: pure MQAR rows (Zoology format) on the pilot Qwen3 shape: does the induction circuit form fast?"""
# ruff: noqa: E402, E731, F811, B023

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import ksa_replication as R
import numpy as np
import torch
import torch.nn.functional as F

name, length, pairs, rows, steps, lr = (
    sys.argv[1],
    int(sys.argv[2]),
    int(sys.argv[3]),
    int(sys.argv[4]),
    int(sys.argv[5]),
    float(sys.argv[6]),
)
shape = os.environ.get("SHAPE", "pilot")
torch.set_num_threads(int(os.environ.get("THREADS", 2)))
torch.manual_seed(0)
from common import build_model

model = build_model(shape)
opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)


def mqar_batch(rng, n, length, pairs):
    q = (length - 1 - 2 * pairs) // 2
    keys = np.argsort(rng.random((n, R.N_KEYS)), 1)[:, :pairs] + R.KEY0
    vals = rng.integers(R.VAL0, R.VAL0 + R.N_VALS, (n, pairs))
    pick = rng.integers(0, pairs, (n, q))
    r = np.arange(n)[:, None]
    body = np.stack([keys, vals], 2).reshape(n, 2 * pairs)
    qs = np.stack([keys[r, pick], vals[r, pick]], 2).reshape(n, 2 * q)
    ids = np.concatenate([np.full((n, 1), R.BOS), body, qs], 1)
    ans = 1 + 2 * pairs + 1 + 2 * np.arange(q)  # value positions in the query region
    return torch.from_numpy(ids), torch.from_numpy(ans)


batch = mqar_batch


def span_batch(rng, n, length, pairs, m):
    """MQAR with spans of m tokens (m-1 key tokens, then a value); m = 2 is mqar_batch's format."""
    q = (length - 1 - m * pairs) // m
    spans = np.concatenate(
        [
            rng.integers(R.KEY0, R.KEY0 + R.N_KEYS, (n, pairs, m - 1)),
            rng.integers(R.VAL0, R.VAL0 + R.N_VALS, (n, pairs, 1)),
        ],
        2,
    )
    pick = rng.integers(0, pairs, (n, q))
    r = np.arange(n)[:, None]
    ids = np.concatenate([np.full((n, 1), R.BOS), spans.reshape(n, -1), spans[r, pick].reshape(n, -1)], 1)
    base = 1 + m * pairs + m * np.arange(q)[:, None] + np.arange(1, m)[None]
    return torch.from_numpy(ids), torch.from_numpy(base.reshape(-1))


SPANS = [int(x) for x in os.environ.get("SPANS", "").split(",") if x]  # span length per phase
PHASE = int(os.environ.get("PHASE", 100))
if True:

    def vcopy_batch(rng, n, length, pairs):
        half = (length - 1) // 2
        x = rng.integers(R.KEY0, R.KEY0 + R.N_KEYS, (n, half))
        gap = rng.integers(0, 12, n)
        noise = rng.integers(R.NOISE0, R.NOISE0 + R.N_NOISE, (n, 12))
        ids = np.full((n, 1 + 2 * half + 12), R.PAD)
        ids[:, 0] = R.BOS
        for i in range(n):
            row = np.concatenate([x[i], noise[i, : gap[i]], x[i]])
            ids[i, 1 + 12 - gap[i] :] = row  # right-aligned: the second copy always ends the row
        ids[:, 1:13] = np.where(ids[:, 1:13] == R.PAD, noise, ids[:, 1:13])
        return torch.from_numpy(ids), torch.from_numpy(ids.shape[1] - half + 1 + np.arange(half - 1))

    if os.environ.get("MODE") == "vcopy":
        batch = vcopy_batch
if os.environ.get("MODE") == "copy":

    def batch(rng, n, length, pairs):
        half = (length - 1) // 2
        x = rng.integers(R.KEY0, R.KEY0 + R.N_KEYS, (n, half))
        ids = np.concatenate([np.full((n, 1), R.BOS), x, x], 1)
        return torch.from_numpy(ids), torch.from_numpy(1 + half + 1 + np.arange(half - 1))


def step_loss(ids, ans, hits=None):
    logits = model(input_ids=ids, use_cache=False).logits[:, ans - 1].float()
    tgt = ids[:, ans]
    if hits is not None:
        hits.append((logits.argmax(-1) == tgt).float().mean().item())
    return F.cross_entropy(logits.flatten(0, 1), tgt.flatten())


log = []
t0 = time.time()
for step in range(steps):
    switch = int(os.environ.get("SWITCH", 0))
    if SPANS:
        m = SPANS[min(step // PHASE, len(SPANS) - 1)]
        ids, ans = span_batch(np.random.default_rng([7, step]), rows, length, pairs, m)
    else:
        ids, ans = (vcopy_batch if step < switch else batch)(
            np.random.default_rng([7, step]), rows, length, pairs
        )
    for g in opt.param_groups:
        g["lr"] = min(1.0, (step + 1) / 30) * lr
    loss = step_loss(ids, ans)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 25 == 0 or step == steps - 1:
        h = []
        with torch.no_grad():
            model.eval()
            step_loss(*batch(np.random.default_rng([11]), 128, length, pairs), h)
            model.train()
        r = {
            "step": step,
            "rows": (step + 1) * rows,
            "loss": round(loss.item(), 3),
            "s": round(time.time() - t0),
            "acc": round(h[0], 3),
        }
        log.append(r)
        print(name, r, flush=True)
        json.dump(log, open(Path(__file__).with_name(f"{name}.json"), "w"))
