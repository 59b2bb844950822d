"""The probes' model: ksa_replication's Qwen3 config of `shape`, changed by environment variables
(ARCH=llama: the same shape without q/k norm; LAYERS, KVH, THETA; KEYS: how many key ids the rows use)."""

import os

import ksa_replication as R
import torch


def build_model(shape: str = "pilot"):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = R.base_config(shape)
    if os.environ.get("KEYS"):
        R.N_KEYS = int(os.environ["KEYS"])
    if os.environ.get("LAYERS"):
        cfg.num_hidden_layers = int(os.environ["LAYERS"])
        cfg.layer_types = cfg.layer_types[: cfg.num_hidden_layers]
    if os.environ.get("KVH"):
        cfg.num_key_value_heads = int(os.environ["KVH"])
    if os.environ.get("THETA"):
        cfg.rope_theta = float(os.environ["THETA"])
        cfg.rope_parameters = dict(cfg.rope_parameters or {}, rope_theta=float(os.environ["THETA"]))
    if os.environ.get("ARCH") == "llama":
        qwen_only = ("model_type", "architectures", "layer_types", "sliding_window", "max_window_layers",
                     "use_sliding_window")
        cfg = LlamaConfig(**{k: v for k, v in cfg.to_dict().items() if k not in qwen_only})
    print(type(cfg).__name__, getattr(cfg, "rope_parameters", None), flush=True)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
