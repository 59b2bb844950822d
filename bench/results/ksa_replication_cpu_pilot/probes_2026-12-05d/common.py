"""The probes' model: ksa_replication.build_full's Qwen3 model of `shape`, its init changed by environment
variables: TIE=1 ties the token embeddings to the output head (the 05c probes' init), EMB_STD (default
ksa_replication.EMB_STD) the embeddings' init std, INIT the other weights' (default INIT_STD); LAYERS
changes the depth."""

import os

import ksa_replication as R
import torch


def build_model(shape: str = "pilot", seed: int = 0):
    from transformers import AutoModelForCausalLM

    cfg = R.base_config(shape, float(os.environ.get("INIT", R.INIT_STD)))
    cfg.tie_word_embeddings = os.environ.get("TIE") == "1"
    if os.environ.get("LAYERS"):
        cfg.num_hidden_layers = int(os.environ["LAYERS"])
        cfg.layer_types = cfg.layer_types[: cfg.num_hidden_layers]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, float(os.environ.get("EMB_STD", R.EMB_STD)))
    print(f"tied {cfg.tie_word_embeddings}, emb std {os.environ.get('EMB_STD', R.EMB_STD)}, "
          f"layers {cfg.num_hidden_layers}", flush=True)
    return model
