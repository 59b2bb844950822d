"""golong: long-context RL post-training (GRPO + TMN-Reweight, GoLongRL tasks, KSA policies)."""

__version__ = "0.1.0"
