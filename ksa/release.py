"""The KSA release format (e.g. OpenOneRec/KSA-4B-base): read it into golong's KSA model, write it back.

A release folder is a Qwen3 checkpoint that its authors load with their own modeling code
(trust_remote_code). golong reads it without that code. What the format holds:

config.json: `model_type: "qwen3"` plus
  use_summary_attention            true (what marks a release folder)
  summary_chunk_size (C), summary_token_num (S)
  summary_token_begin              first summary token id = number of text ids; summary j has id begin + j
  vocab_size                       rows of the embedding: text ids, the S summary rows, maybe padding
  summary_sliding_chunk_num        per-layer window in chunks: int, list or a pattern string such as
                                   "([128]*3+[1024]*1)*6" (parsed by ksa.config's grammar, never eval'd)
  summary_chunk_position_ids_type  "origin": text keeps its own position (the only value supported)
  summary_token_position_ids_type  "last_chunk_slice_right": summary j of chunk c sits at
                                   c*C + (j+1)*C//S - 1 (ksa/layout.py; the only value supported)
  summary_independent_parameters   separate q/k/v projections for summary slots
  mix_coeff                        summary slot q/k/v = m * norm(summary proj) + (1-m) * norm(shared proj)
                                   (q/k through the shared per-head q_norm/k_norm; v has no norm)
  summary_independent_attention_layernorm   a separate input layernorm for summary slots
  summary_attention_mode           which kernel the reference uses ("kernel", "mask", ...): kept, no effect
  summary_layer_freq               which layers use summary attention: must be every layer
  truncate_predict_nums            logits keep the first n columns (n <= 0: all); absent -> 151936,
                                   the reference code's default

tensors: Qwen3 names, plus per layer `self_attn.{q,k,v}_proj_summary` and
`input_layernorm_summary`; `model.embed_tokens.weight` has the summary rows at
summary_token_begin..+S; `lm_head.weight` (untied) is padded with zero rows to vocab_size.

Logits: the reference returns lm_head(hidden)[..., :n] for text positions only (summary slots are
dropped before the head). golong's loaded model has vocab_size = n (embedding and lm_head keep
their first n rows; the summary rows move to `summary_embed`), so `model(ids).logits` equals the
reference's logits column for column, at every text position. (The reference, called without labels
or logits_to_keep, returns only the last position's logits; the values it returns are the same.)

Decode: golong's KSACache applies each layer's own window. The reference's decode cache treats every
layer whose window is not the smallest as a full layer, so with three or more window sizes its
cached decode differs from its own prefill; golong's cached decode equals full recomputation.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ksa.config import KSAConfig, KSAConfigError, parse_window_pattern, resolve_windows

REFERENCE_DEFAULT_TRUNCATE = 151936  # what the reference modeling code assumes when the key is absent
RELEASE_KEYS = (
    "use_summary_attention", "summary_chunk_size", "summary_token_num", "summary_token_begin",
    "summary_sliding_chunk_num", "summary_chunk_position_ids_type", "summary_token_position_ids_type",
    "summary_independent_parameters", "summary_independent_attention_layernorm", "summary_attention_mode",
    "summary_layer_freq", "mix_coeff", "truncate_predict_nums",
)
_NOT_BASE = (*RELEASE_KEYS, "auto_map", "architectures", "model_type")
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
)
# release tensor name <-> golong parameter name (everything else is the same in both)
_TO_GOLONG = [
    (re.compile(r"^(model\.layers\.\d+\.self_attn\.)([qkv])_proj_summary\.(weight|bias)$"), r"\1summary_\2_proj.\3"),
    (re.compile(r"^(model\.layers\.\d+\.)input_layernorm_summary\.weight$"), r"\1summary_input_layernorm.weight"),
]
_TO_RELEASE = [
    (re.compile(r"^(model\.layers\.\d+\.self_attn\.)summary_([qkv])_proj\.(weight|bias)$"), r"\1\2_proj_summary.\3"),
    (re.compile(r"^(model\.layers\.\d+\.)summary_input_layernorm\.weight$"), r"\1input_layernorm_summary.weight"),
]


class ReleaseFormatError(KSAConfigError):
    """A release checkpoint uses a key, value or tensor golong cannot load exactly; the message names it."""


def is_release_config(raw: dict) -> bool:
    """True for a config.json in the KSA release format (a plain Qwen3 loader would drop KSA)."""
    return raw.get("use_summary_attention") is True


def _rename(name: str, rules) -> str:
    for pattern, repl in rules:
        if pattern.match(name):
            return pattern.sub(repl, name)
    return name


def _int(raw: dict, key: str, default: Any = None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReleaseFormatError(f"config key {key!r} must be an integer, got {value!r}")
    return value


def _bool(raw: dict, key: str, default: bool = False) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ReleaseFormatError(f"config key {key!r} must be true or false, got {value!r}")
    return value


def _layer_list(raw: dict, key: str, num_layers: int) -> list[int]:
    """An int / list / pattern-string value of `key` as one int per layer (safe pattern parser)."""
    value = raw[key]
    try:
        if isinstance(value, str):
            value = parse_window_pattern(value)
        if isinstance(value, bool) or not isinstance(value, int | list):
            raise KSAConfigError(f"expected an int, a list or a pattern string, got {value!r}")
        if isinstance(value, int):
            value = [value] * num_layers
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise KSAConfigError(f"expected integers, got {value!r}")
        if len(value) != num_layers:
            raise KSAConfigError(f"gives {len(value)} layers but num_hidden_layers is {num_layers}")
    except KSAConfigError as e:
        raise ReleaseFormatError(f"config key {key!r}: {e}") from None
    return [int(v) for v in value]


def release_settings(raw: dict) -> tuple[KSAConfig, dict, dict]:
    """(KSAConfig, base Qwen3 config fields, release metadata) from a release config.json dict."""
    if raw.get("model_type") != "qwen3":
        raise ReleaseFormatError(f"config key 'model_type' is {raw.get('model_type')!r}; the KSA release format is Qwen3 only")
    if not is_release_config(raw):
        raise ReleaseFormatError("config key 'use_summary_attention' is not true: not a KSA release checkpoint (load it as a plain model)")
    unknown = [k for k in raw if k.startswith("summary_") and k not in RELEASE_KEYS]
    if unknown:
        raise ReleaseFormatError(f"config key {unknown[0]!r} is not part of the KSA release format golong reads")
    layers = _int(raw, "num_hidden_layers")
    C, S = _int(raw, "summary_chunk_size"), _int(raw, "summary_token_num")
    if C < 1 or not 1 <= S <= C:
        raise ReleaseFormatError(f"config keys 'summary_chunk_size'={C}, 'summary_token_num'={S}: need 1 <= S <= C")
    begin, vocab = _int(raw, "summary_token_begin"), _int(raw, "vocab_size")
    if begin < 1 or begin + S > vocab:
        raise ReleaseFormatError(f"config key 'summary_token_begin'={begin}: the {S} summary rows must lie inside vocab_size={vocab}")
    for key, allowed in (("summary_chunk_position_ids_type", "origin"), ("summary_token_position_ids_type", "last_chunk_slice_right")):
        if raw.get(key, allowed) != allowed:
            raise ReleaseFormatError(f"config key {key!r}={raw[key]!r} is not supported (golong's layout is {allowed!r})")
    if "summary_layer_freq" in raw and set(_layer_list(raw, "summary_layer_freq", layers)) != {1}:
        raise ReleaseFormatError("config key 'summary_layer_freq': golong needs summary attention in every layer (all 1)")
    if "summary_sliding_chunk_num" not in raw:
        raise ReleaseFormatError("config key 'summary_sliding_chunk_num' is missing (the per-layer window in chunks)")
    windows = _layer_list(raw, "summary_sliding_chunk_num", layers)
    if min(windows) < 1:
        raise ReleaseFormatError(f"config key 'summary_sliding_chunk_num': windows must be >= 1 chunk, got {min(windows)}")
    mix = raw.get("mix_coeff", 1.0)
    if isinstance(mix, bool) or not isinstance(mix, int | float):
        raise ReleaseFormatError(f"config key 'mix_coeff' must be a number, got {mix!r}")
    mode = raw.get("summary_attention_mode", "kernel")
    if not isinstance(mode, str):
        raise ReleaseFormatError(f"config key 'summary_attention_mode' must be a string, got {mode!r}")
    truncate = _int(raw, "truncate_predict_nums", REFERENCE_DEFAULT_TRUNCATE)
    width = vocab if truncate <= 0 else min(truncate, vocab)
    if width < begin:
        raise ReleaseFormatError(
            f"config key 'truncate_predict_nums'={truncate} keeps fewer logit columns than there are text ids "
            f"(summary_token_begin={begin}); golong needs every text id predictable"
        )
    ksa = KSAConfig(
        chunk=C, summaries=S, windows=windows, summary_qkv=_bool(raw, "summary_independent_parameters"),
        mix_coeff=float(mix), summary_norm=_bool(raw, "summary_independent_attention_layernorm"),
    )
    base = {k: v for k, v in raw.items() if k not in _NOT_BASE}
    base["vocab_size"] = width
    meta = {
        "summary_token_begin": begin, "vocab_size": vocab, "summary_attention_mode": mode,
        "summary_sliding_chunk_num": raw["summary_sliding_chunk_num"],
        "summary_layer_freq": raw.get("summary_layer_freq"), "auto_map": raw.get("auto_map"),
    }
    return ksa, base, meta


def _release_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise ReleaseFormatError(f"no model.safetensors (or index) in {path}; the KSA release format stores safetensors")


def _torch_dtype(value: Any) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    dt = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dt, torch.dtype):
        raise ReleaseFormatError(f"unknown dtype {value!r}; use float32, bfloat16 or float16")
    return dt


def from_pretrained(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None):
    """Load a KSA release folder into golong's KSAQwen3ForCausalLM (no trust_remote_code).

    dtype: None -> the dtype named in config.json (float32 if none). The model comes back in eval mode.
    """
    from safetensors import safe_open
    from transformers import GenerationConfig, Qwen3Config

    from ksa.modeling import KSA_CLASSES, ksa_config_from

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ReleaseFormatError(f"no config.json in {path}")
    raw = json.loads(cfg_file.read_text())
    ksa, base, meta = release_settings(raw)
    dtype = _torch_dtype(dtype) or _torch_dtype(raw.get("dtype") or raw.get("torch_dtype")) or torch.float32
    device = torch.device(device or "cpu")
    config = ksa_config_from(Qwen3Config(**base), ksa)
    config.ksa_release = meta
    config._name_or_path = str(path)
    width, begin, S = config.vocab_size, meta["summary_token_begin"], ksa.summaries

    state: dict[str, torch.Tensor] = {}
    for file in _release_files(path):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open handles have keys(), not iteration)
                if name.endswith("rotary_emb.inv_freq"):
                    continue  # recomputed from the config
                t = f.get_tensor(name)
                if name == "model.embed_tokens.weight":
                    if t.shape[0] != meta["vocab_size"]:
                        raise ReleaseFormatError(f"tensor {name} has {t.shape[0]} rows but vocab_size is {meta['vocab_size']}")
                    state["summary_embed.weight"] = t[begin : begin + S].clone()
                    t = t[:width]
                elif name == "lm_head.weight":
                    if config.tie_word_embeddings:
                        continue  # tied: the head is the embedding
                    t = t[:width]
                state[_rename(name, _TO_GOLONG)] = t.to(device=device, dtype=dtype).contiguous()

    cls = KSA_CLASSES["qwen3"][1]
    with torch.device("meta"):
        model = cls(config)
    expected = {n for n, _ in model.named_parameters()}
    unexpected = sorted(set(state) - expected)
    if unexpected:
        raise ReleaseFormatError(f"tensor {_rename(unexpected[0], _TO_RELEASE)!r} has no place in the model its config.json describes")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    with torch.device(device):  # non-persistent buffers (RoPE inv_freq): rebuilt from the config
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    left += [n for n, b in model.named_buffers() if b.device.type == "meta"]
    if left:
        raise ReleaseFormatError(f"tensor {_rename(left[0], _TO_RELEASE)!r} is missing from {path}")
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()


def release_config(model) -> dict:
    """The release config.json dict of a golong KSA Qwen3 model (see the module docstring)."""
    from ksa.modeling import ksa_settings

    cfg = model.config
    if cfg.model_type != "ksa_qwen3":
        raise ReleaseFormatError(f"the KSA release format holds Qwen3 models; this one is {cfg.model_type!r}")
    settings = ksa_settings(cfg)
    if not settings.summaries_visible:
        raise ReleaseFormatError("ksa summaries_visible=False (Sliding Chunk Attention) has no release-format key")
    meta = dict(getattr(cfg, "ksa_release", None) or {})
    width = cfg.vocab_size
    begin = meta.get("summary_token_begin", width)
    vocab = max(meta.get("vocab_size", 0), begin + settings.summaries, width)
    out = {k: v for k, v in cfg.to_diff_dict().items() if not k.startswith("ksa_") and k not in _NOT_BASE}
    out.pop("_name_or_path", None)
    windows = meta.get("summary_sliding_chunk_num")
    if windows is None or resolve_windows(windows, cfg.num_hidden_layers) != list(cfg.ksa_windows):
        windows = list(cfg.ksa_windows)
    out.update(
        architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=vocab,
        use_summary_attention=True, summary_chunk_size=settings.chunk, summary_token_num=settings.summaries,
        summary_token_begin=begin, summary_sliding_chunk_num=windows,
        summary_chunk_position_ids_type="origin", summary_token_position_ids_type="last_chunk_slice_right",
        summary_independent_parameters=settings.summary_qkv, mix_coeff=settings.mix_coeff,
        summary_independent_attention_layernorm=settings.summary_norm,
        summary_attention_mode=meta.get("summary_attention_mode", "kernel"), truncate_predict_nums=width,
    )
    if meta.get("summary_layer_freq") is not None:
        out["summary_layer_freq"] = meta["summary_layer_freq"]
    if meta.get("auto_map"):
        out["auto_map"] = meta["auto_map"]
    return out


def release_state_dict(model, config: dict) -> dict[str, torch.Tensor]:
    """Release-format tensors: summary rows appended to the embedding, zero-padded lm_head, renamed projections."""
    vocab, begin = config["vocab_size"], config["summary_token_begin"]
    state: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        if name == "summary_embed.weight" or (name == "lm_head.weight" and model.config.tie_word_embeddings):
            continue
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            full = t.new_zeros(vocab, t.shape[1])
            full[: t.shape[0]] = t
            if name == "model.embed_tokens.weight":
                full[begin : begin + model.summary_embed.weight.shape[0]] = model.summary_embed.weight.detach().to(t.dtype)
            t = full
        state[_rename(name, _TO_RELEASE)] = t.contiguous().cpu()
    return state


def save_pretrained(model, out_dir: str | Path, format: str = "ksa-release", max_shard_size: str = "5GB") -> Path:
    """Write a golong KSA model: format "ksa-release" (the released format) or "golong" (save_pretrained)."""
    out = Path(out_dir)
    if format == "golong":
        model.save_pretrained(out)
        return out
    if format != "ksa-release":
        raise ReleaseFormatError(f"unknown format {format!r}; use 'ksa-release' or 'golong'")
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    config = release_config(model)
    state = release_state_dict(model, config)
    out.mkdir(parents=True, exist_ok=True)
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, str(out / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": split.tensor_to_filename}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config["dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        copy.deepcopy(gen).save_pretrained(out)
    return out


def load(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None):
    """A KSA model from a release folder or a golong-format folder (model_type ksa_*)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ReleaseFormatError(f"no config.json in {path} (give a local model folder)")
    raw = json.loads(cfg_file.read_text())
    if is_release_config(raw):
        return from_pretrained(path, dtype=dtype, device=device)
    if not str(raw.get("model_type", "")).startswith("ksa_"):
        raise ReleaseFormatError(f"{path} is not a KSA model (model_type {raw.get('model_type')!r}); convert it first: golong ksa convert")
    from transformers import AutoModelForCausalLM

    import ksa.modeling  # noqa: F401  (registers the ksa_* types)

    model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype) or "auto")
    return model.to(device or "cpu").eval()


def export(model_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | str | None = None) -> Path:
    """`golong ksa export`: a golong or release KSA folder -> release folder (+ tokenizer and code files)."""
    src, out = Path(model_dir), Path(out_dir)
    if out.resolve() == src.resolve():
        raise ReleaseFormatError("the output folder must differ from the model folder")
    model = load(src, dtype=dtype)
    save_pretrained(model, out, format="ksa-release")
    extra = list(_TOKENIZER_FILES)
    if (getattr(model.config, "ksa_release", None) or {}).get("auto_map"):
        extra += sorted(p.name for p in src.glob("*.py"))  # the checkpoint's own modeling code, for auto_map
    for name in extra:
        if (src / name).is_file() and not (out / name).exists():
            shutil.copy2(src / name, out / name)
    return out
