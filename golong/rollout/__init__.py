"""Rollout engines: `RolloutEngine` (the interface), `HFEngine` (transformers); vLLM arrives later."""

from golong.rollout.base import Completion, RolloutEngine, SamplingParams, encode_chat, make_engine

__all__ = ["Completion", "RolloutEngine", "SamplingParams", "encode_chat", "make_engine"]
