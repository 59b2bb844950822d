"""The loop engine (`rollout.engine: loop`): a decode loop over the transformers model's own forward
and cache class, batched, with the sampler's log-probs. It runs any causal LM (the static engine,
rollout/static.py, runs Qwen3 / Qwen2 / Llama and their KSA forms; the registry falls back to this
one for everything else).

Why a hand-written decode loop instead of `model.generate`:
- each prompt is prefilled once and its KV cache repeated G times (`batch_repeat_interleave`), so a
  group of G responses costs one prefill, not G — the dominant cost for long prompts;
- sampling draws from a private `torch.Generator`, so a step's samples depend only on its seed, not
  on whatever else used the global RNG;
- the log-prob of every sampled token under the sampling distribution comes for free;
- rows that hit EOS leave the batch (`batch_select_indices`), so short answers stop costing compute.
The model's own cache class is used (whatever its forward creates), so models that bring their own
cache (KSA) generate through the same loop; a KSA cache is sized to the batch's longest sequence.
- with `kv_budget_gb`, a batch admits as many groups as their decode K/V fits in the budget
  (golong/rollout/kvmem.py: a KSA policy's small-window layers are bounded, so more of its long
  rollouts run at once); `stats` reports the concurrency and K/V bytes of the last `generate`;
- sampling uses a counter-based random stream per (seed, prompt, sample, step) (the same as the
  static engine's), so a completion does not depend on which other rows share its batch.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from golong.rollout.base import Completion, RolloutEngine, SamplingParams, copy_weights_into
from golong.rollout.kvmem import cache_nbytes, model_kv_bytes_fn, plan_batches
from golong.rollout.sampling import eos_ids, row_key, sample_rows
from ksa import is_ksa


class LoopEngine(RolloutEngine):
    """Generate with a transformers causal LM; prompts are left-padded into batches."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 32, device: str | None = None,
                 kv_budget_gb: float | None = None):
        """`batch_size` caps the rows decoded at once; `kv_budget_gb` (None = off) also caps them by
        their decode K/V bytes (set batch_size high to let the budget decide)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.kv_budget = None if kv_budget_gb is None else int(kv_budget_gb * 1024**3)
        self.seq_kv_bytes = model_kv_bytes_fn(model)
        if self.kv_budget is not None and self.seq_kv_bytes is None:
            raise ValueError(f"rollout.kv_budget_gb: cannot size the K/V of a {type(model).__name__} from its config "
                             "(no layer/head counts); leave kv_budget_gb unset")
        self.stats: dict[str, float] = {}
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device)
        self.eos_ids = eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        # transformers renamed `past_key_values` to `cache` (5.x); older models keep the old name.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params

    # --- weights -----------------------------------------------------------------------------
    def load_weights(self, state_dict: dict[str, Any]) -> None:
        copy_weights_into(self.model, state_dict)

    def sleep(self) -> None:
        if self.device.type != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake(self) -> None:
        if self.device.type != "cpu":
            self.model.to(self.device)

    # --- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[Completion]]:
        self.model.eval()  # a model shared with the learner comes back in train mode (dropout)
        out: list[list[Completion]] = [[] for _ in prompts]
        # Longest first: similar lengths share a batch, so little padding is prefilled.
        batches = plan_batches([len(p) for p in prompts], n, params.max_new_tokens, cap=self.batch_size,
                               budget=self.kv_budget, seq_bytes=self.seq_kv_bytes)
        self.stats = {"concurrency": 0.0, "kv_bytes": 0.0, "kv_bytes_peak": 0.0, "batches": float(len(batches))}
        for idx in batches:
            width = len(prompts[idx[0]]) + params.max_new_tokens
            planned = len(idx) * n * self.seq_kv_bytes(width) if self.seq_kv_bytes else 0
            self.stats["concurrency"] = max(self.stats["concurrency"], float(len(idx) * n))
            self.stats["kv_bytes"] = max(self.stats["kv_bytes"], float(planned))
            for i, comps in zip(idx, self._generate_batch([prompts[i] for i in idx], idx, n, params), strict=True):
                out[i] = comps
        return out

    def _new_cache(self, max_length: int) -> dict[str, Any]:
        """A KSA policy gets a KSACache sized to this batch (layers whose window covers max_length keep
        plain text K/V, growth stops at max_length); other models create their own cache."""
        if not is_ksa(self.model.config):
            return {}
        from ksa.cache import KSACache

        return {self._cache_arg: KSACache(self.model.config, max_length=max_length)}

    def _generate_batch(
        self, prompts: list[list[int]], prompt_ids: list[int], n: int, params: SamplingParams
    ) -> list[list[Completion]]:
        """Generate n samples for each prompt; prompt_ids are their indices in the caller's list
        (they key the random streams)."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
        extra.update(self._new_cache(width + params.max_new_tokens))
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **extra)
        cache = _cache_of(out)
        logits = out.logits[:, -1, :].float()
        # One prefill per prompt, then G copies of its cache (rows ordered prompt-major).
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, 0)
            mask = mask.repeat_interleave(n, 0)
            pos = pos.repeat_interleave(n, 0)
        rows = len(prompts) * n
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logps: list[list[float]] = [[] for _ in range(rows)]
        finish = ["length"] * rows
        active = torch.arange(rows, device=self.device)  # original row of each batch row
        keys = torch.tensor([row_key(params.seed, p, j) for p in prompt_ids for j in range(n)], device=self.device)
        last_pos = pos[:, -1]
        eos = torch.tensor(sorted(self.eos_ids), device=self.device)
        for t in range(params.max_new_tokens):
            self.stats["kv_bytes_peak"] = max(self.stats.get("kv_bytes_peak", 0.0), float(cache_nbytes(cache)))
            token, logp = sample_rows(logits, params, keys, torch.full_like(keys, t))
            for r, tok, lp in zip(active.tolist(), token.tolist(), logp.tolist(), strict=True):
                tokens[r].append(tok)
                logps[r].append(lp)
            done = torch.isin(token, eos)
            for r in active[done].tolist():
                finish[r] = "stop"
            keep = ~done
            if t == params.max_new_tokens - 1 or not keep.any():
                break
            if not keep.all():
                sel = keep.nonzero().squeeze(-1)
                cache.batch_select_indices(sel)
                active, token, mask, last_pos, keys = active[sel], token[sel], mask[sel], last_pos[sel], keys[sel]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            last_pos = last_pos + 1
            step = self.model(
                input_ids=token[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                use_cache=True, **{self._cache_arg: cache},
            )
            cache = _cache_of(step)
            logits = step.logits[:, -1, :].float()
        result: list[list[Completion]] = []
        for p_i, prompt in enumerate(prompts):
            group = []
            for r in range(p_i * n, (p_i + 1) * n):
                resp = tokens[r]
                text_ids = resp[:-1] if finish[r] == "stop" else resp  # the EOS token is not text
                group.append(Completion(
                    prompt_index=prompt_ids[p_i], prompt_ids=list(prompt), response_ids=resp,
                    text=self.tokenizer.decode(text_ids, skip_special_tokens=False),
                    logprobs=logps[r], finish_reason=finish[r],  # type: ignore[arg-type]
                ))
            result.append(group)
        return result


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


