"""golong: long-context RL post-training (GRPO + TMN-Reweight, GoLongRL tasks, KSA policies)."""

import os

__version__ = "0.1.0"

# cuDNN's fused attention builds a plan for every new sequence length (~80 ms a forward + backward at
# 1.7B / 32K, bench/cudnn_plans.py), and golong's learner and engine meet new lengths at almost every step.
# With this variable cuDNN keys its plans by power-of-two length instead (~1 ms for a new length), for
# calls whose q, k, v are laid out [B, S, H, D] in memory, as golong's are. torch reads it once, at its
# first cuDNN attention call: set here, before any. A value already in the environment wins ("0" turns it
# off, and with it ksa.pieces on CUDA: ksa.pieces.pays_off).
os.environ.setdefault("TORCH_CUDNN_SDPA_AVOID_RECOMPILE", "1")
