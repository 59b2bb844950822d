"""golong.precision.precision: the learner's precision as one pure function of the recipe, by table."""

from __future__ import annotations

import pytest

from golong.config import LoraConfig, ModelConfig, OptimConfig
from golong.precision import Precision, precision

# (model.dtype, fp32_master_weights, master_weights, lora, sharded) -> (load_dtype, autocast, optimizer_master, fsdp_bf16)
TABLE = [
    (("float32", True, "model", False, False), ("float32", False, False, False)),
    (("float32", True, "optimizer", False, True), ("float32", False, False, False)),
    (("float32", False, "model", True, False), ("float32", False, False, False)),
    # bf16 compute over float32 weights held by the model, under autocast (one rank or sharded)
    (("bfloat16", True, "model", False, False), ("float32", True, False, False)),
    (("bfloat16", True, "model", False, True), ("float32", True, False, False)),
    # ... or by the optimizer beside a bf16 model; sharded, by FSDP's float32 shards gathered as bf16
    (("bfloat16", True, "optimizer", False, False), ("bfloat16", False, True, False)),
    (("bfloat16", True, "optimizer", False, True), ("float32", False, False, True)),
    # LoRA: a bf16 base under autocast (peft's adapters are float32), wherever the recipe puts masters
    (("bfloat16", True, "model", True, False), ("bfloat16", True, False, False)),
    (("bfloat16", True, "optimizer", True, False), ("bfloat16", True, False, False)),
    # pure bf16
    (("bfloat16", False, "model", False, False), ("bfloat16", False, False, False)),
    (("bfloat16", False, "optimizer", False, True), ("bfloat16", False, False, False)),
    (("bfloat16", False, "model", True, False), ("bfloat16", False, False, False)),
]


@pytest.mark.parametrize(("given", "want"), TABLE, ids=["-".join(map(str, g)) for g, _ in TABLE])
def test_precision_table(given, want):
    dtype, fp32_master, master_weights, lora, sharded = given
    model = ModelConfig(path="m", dtype=dtype, lora=LoraConfig(r=4, alpha=8) if lora else None)
    optim = OptimConfig(fp32_master_weights=fp32_master, master_weights=master_weights)
    got = precision(model, optim, sharded=sharded)
    assert got == Precision(*want)
    with pytest.raises(AttributeError):  # frozen: nothing rewrites it later
        got.autocast = not got.autocast  # type: ignore[misc]
