"""The learner's numeric precision: one frozen value computed from the recipe.

A bf16 policy trains over float32 master weights unless told not to (optim.fp32_master_weights): an
lr-1e-6 update is far below bf16's resolution. Where the float32 weights live is optim.master_weights:

  "model"      a float32 model run under bf16 autocast;
  "optimizer"  a bf16 model (bf16 activations, no per-forward weight casts) whose float32 copies the
               optimizer steps and copies back; sharded over several ranks, FSDP keeps float32 shards
               and gathers them as bf16 for compute instead (the same split without a second copy).

With LoRA only the adapters train (peft keeps them float32) under autocast; the frozen base stays bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

from golong.config import ModelConfig, OptimConfig


@dataclass(frozen=True)
class Precision:
    """How the learner holds its weights and computes (see `precision`)."""

    load_dtype: str  # the policy's weights as loaded: "float32" when they are the float32 master copy
    autocast: bool  # bf16 autocast over float32 weights
    optimizer_master: bool  # a bf16 model whose float32 copies the optimizer steps and copies back
    fsdp_bf16: bool  # sharded float32 weights gathered as bf16 for compute, gradients reduced in float32


def precision(model: ModelConfig, optim: OptimConfig, *, sharded: bool) -> Precision:
    """The learner's precision from the recipe (model.dtype and .lora, optim.fp32_master_weights and
    .master_weights) and whether its weights are sharded over several ranks."""
    lora = model.lora is not None
    mixed = model.dtype == "bfloat16" and optim.fp32_master_weights
    in_optimizer = mixed and not lora and optim.master_weights == "optimizer"
    autocast = mixed and not in_optimizer
    fsdp_bf16 = in_optimizer and sharded
    fp32_model = (autocast or fsdp_bf16) and not lora
    return Precision(load_dtype="float32" if fp32_model else model.dtype, autocast=autocast,
                     optimizer_master=in_optimizer and not sharded, fsdp_bf16=fsdp_bf16)
