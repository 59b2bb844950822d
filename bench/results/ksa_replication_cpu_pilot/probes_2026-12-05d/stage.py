"""One curriculum stage alone: the pilot shape from ksa_replication.build_full (untied, embeddings N(0, 1)),
trained by ksa_replication.train_lockstep on one stage (no gate), then evaluated at 256 / 512 tokens.
  python stage.py NAME LENGTH PAIRS KV_QUERIES TOKENS_PER_STEP STEPS LR
KV_QUERIES > 0: make_batch rows of the task with that many kv queries (with replacement);
KV_QUERIES = 0: recall_batch rows (ksa_replication.RECALL). One thread."""
# ruff: noqa: E402

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import ksa_replication as R
import torch

torch.set_num_threads(1)
name, length, pairs, nq, tps, steps, lr = sys.argv[1], *map(int, sys.argv[2:7]), float(sys.argv[7])
plan = R.Plan("pilot", [(length, pairs, 1.0, {"kv": nq} if nq else R.RECALL)], steps, tps, [256, 512], 32, 16384,
              lr=lr, window=4, mastery=0)
model = R.build_full("pilot", 0)
t0 = time.time()
R.train_lockstep({"full": model}, plan, "cpu", log_every=25)
print(name, "eval", R.evaluate(model, plan, "cpu"), f"{time.time() - t0:.0f}s", flush=True)
