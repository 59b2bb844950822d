"""Throwaway probe: does the first curriculum stage teach keyed lookup (not elimination)?"""
# ruff: noqa: E402, E731, F811, B023

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import ksa_replication as R
import numpy as np
import torch

name, length, pairs, nq, replace, rows, steps, lr = (
    sys.argv[1],
    int(sys.argv[2]),
    int(sys.argv[3]),
    int(sys.argv[4]),
    sys.argv[5] == "1",
    int(sys.argv[6]),
    int(sys.argv[7]),
    float(sys.argv[8]),
)
torch.set_num_threads(2)
torch.manual_seed(0)
from common import build_model

model = build_model("pilot")
opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)


def acc(length, pairs, nq, replace, seed, n=128):
    b = R.make_batch(
        np.random.default_rng([seed, length, pairs]), n, length, {"kv": nq}, max_pairs=pairs, replace=replace
    )
    hits = {}
    with torch.no_grad():
        model.eval()
        R.batch_loss(model, b, "cpu", hits)
        model.train()
    return round(float(torch.cat(hits["kv"]).float().mean()), 3)


log = []
t0 = time.time()
for step in range(steps):
    b = R.make_batch(
        np.random.default_rng([7, step]), rows, length, {"kv": nq}, max_pairs=pairs, replace=replace
    )
    cur = min(1.0, (step + 1) / 30) * lr
    for g in opt.param_groups:
        g["lr"] = cur
    loss = R.batch_loss(model, b, "cpu")
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 50 == 0 or step == steps - 1:
        r = {
            "step": step,
            "rows": (step + 1) * rows,
            "loss": round(loss.item(), 3),
            "s": round(time.time() - t0),
            "own": acc(length, pairs, nq, replace, 11),
            "t128x8r": acc(128, 8, 4, True, 12),
            "t256x16r": acc(256, 16, 8, True, 13),
        }
        log.append(r)
        print(name, r, flush=True)
        json.dump(log, open(Path(__file__).with_name(f"{name}.json"), "w"))
