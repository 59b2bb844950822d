"""Plain multi-query associative recall on the pilot Qwen3 shape (probes_2026-12-05c/mqar.py's MQAR mode):
`<bos> k1 v1 .. kP vP` then `k v` queries drawn with replacement, every query's value supervised.
Prints and writes NAME.json: held-out accuracy on 128 rows every 25 steps.
  python mqar.py NAME LENGTH PAIRS ROWS STEPS LR      (environment: common.py; THREADS, default 1)"""
# ruff: noqa: E402

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import ksa_replication as R
import numpy as np
import torch
import torch.nn.functional as F
from common import build_model

name, length, pairs, rows, steps, lr = sys.argv[1], *map(int, sys.argv[2:6]), float(sys.argv[6])
torch.set_num_threads(int(os.environ.get("THREADS", 1)))
model = build_model()
opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)


def mqar_batch(rng, n):
    q = (length - 1 - 2 * pairs) // 2
    keys = np.argsort(rng.random((n, R.N_KEYS)), 1)[:, :pairs] + R.KEY0
    vals = rng.integers(R.VAL0, R.VAL0 + R.N_VALS, (n, pairs))
    pick = rng.integers(0, pairs, (n, q))
    r = np.arange(n)[:, None]
    body = np.stack([keys, vals], 2).reshape(n, 2 * pairs)
    qs = np.stack([keys[r, pick], vals[r, pick]], 2).reshape(n, 2 * q)
    ids = np.concatenate([np.full((n, 1), R.BOS), body, qs], 1)
    return torch.from_numpy(ids), torch.from_numpy(1 + 2 * pairs + 1 + 2 * np.arange(q))


def loss_and_acc(ids, ans):
    logits = model(input_ids=ids, use_cache=False).logits[:, ans - 1].float()
    tgt = ids[:, ans]
    return F.cross_entropy(logits.flatten(0, 1), tgt.flatten()), (logits.argmax(-1) == tgt).float().mean().item()


log, t0 = [], time.time()
held_out = mqar_batch(np.random.default_rng([11]), 128)
for step in range(steps):
    for g in opt.param_groups:
        g["lr"] = min(1.0, (step + 1) / 30) * lr
    loss, _ = loss_and_acc(*mqar_batch(np.random.default_rng([7, step]), rows))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 25 == 0 or step == steps - 1:
        with torch.no_grad():
            model.eval()
            acc = loss_and_acc(*held_out)[1]
            model.train()
        log.append({"step": step, "rows": (step + 1) * rows, "loss": round(loss.item(), 3),
                    "s": round(time.time() - t0), "acc": round(acc, 3)})
        print(name, log[-1], flush=True)
        json.dump(log, open(Path(__file__).with_name(f"{name}.json"), "w"))
