"""Probe of 2026-12-06 (H100): which checkpoint setting lets a compiled KSA learner step run on CUDA.

From the repo root: python3 bench/results/h100_2026-12-06b/probe.py MODE SHAPE TOKENS (modes below; one
GRPO group of 8 through bench/learner.py's run_one; appends a JSON line to $OUT/ksa_ckpt_diag.jsonl)."""
import json
import os
import sys
import time

import torch

sys.path.insert(0, "bench")  # bench/learner.py

mode, shape, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "plainsac":
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    import golong.checkpointing as gc_
    gc_.save_attention_context = lambda: create_selective_checkpoint_contexts(gc_._policy)
    import golong.models as gm
    gm.save_attention_context = gc_.save_attention_context
if mode == "kept":
    import ksa.modeling as km
    import ksa.shared as sh
    from golong.checkpointing import kept_through_recompute
    from ksa.flex_attention import flex_between_graphs
    def kept_shared(q, k, v, mask, scale=None):
        if isinstance(mask, torch.Tensor):
            return sh.shared_ksa_attention(q, k, v, mask, scale)
        scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
        return kept_through_recompute(flex_between_graphs, q, k, v, mask, scale, q.shape[1] != k.shape[1])
    km.shared_ksa_attention = kept_shared
import learner as L  # noqa: E402

L.VARIANTS["ksa_full_compile"] = dict(ckpt="full", master="optimizer", fused=True, ksa=True, compile=True)
L.VARIANTS["ksa_sac_eager"] = dict(ckpt="save_attention", master="optimizer", fused=True, ksa=True)
variant = {"cur": "ksa_optmaster_sac_compile", "noshare": "ksa_optmaster_sac_compile", "kept": "ksa_optmaster_sac_compile", "plainsac": "ksa_optmaster_sac_compile", "fullckpt": "ksa_full_compile",
           "eager": "ksa_sac_eager", "fullattn": "golong_optmaster_sac_compile"}[mode]
from torch._dynamo.utils import counters  # noqa: E402

rec = {"mode": mode, "variant": variant, "shape": shape, "tokens": tokens}
t = time.time()
try:
    rec.update(L.run_one(shape, tokens, variant, os.environ.get("DEV", "cuda"), int(os.environ.get("RESP", 512)), 2, 8, mode != "noshare"))
except Exception as e:
    rec.update(status="error", error=f"{type(e).__name__}: {str(e)[:600]}")
rec["wall_s"] = round(time.time() - t, 1)
rec["graphs"] = counters["stats"].get("unique_graphs", 0)
rec["graph_breaks"] = {k[:160]: v for k, v in counters["graph_break"].items()}
print(json.dumps(rec, indent=1), flush=True)
with open(os.path.join(os.environ.get("OUT", "."), "ksa_ckpt_diag.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\n")
os._exit(0)
