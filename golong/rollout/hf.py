"""The transformers rollout engine: batched sampling with a KV cache and the sampler's log-probs.

Why a hand-written decode loop instead of `model.generate`:
- each prompt is prefilled once and its KV cache repeated G times (`batch_repeat_interleave`), so a
  group of G responses costs one prefill, not G — the dominant cost for long prompts;
- sampling draws from a private `torch.Generator`, so a step's samples depend only on its seed, not
  on whatever else used the global RNG;
- the log-prob of every sampled token under the sampling distribution comes for free;
- rows that hit EOS leave the batch (`batch_select_indices`), so short answers stop costing compute.
The model's own cache class is used (whatever its forward creates), so models that bring their own
cache (KSA) generate through the same loop.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from golong.rollout.base import Completion, RolloutEngine, SamplingParams


class HFEngine(RolloutEngine):
    """Generate with a transformers causal LM; prompts are left-padded into batches."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 32, device: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device)
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        # transformers renamed `past_key_values` to `cache` (5.x); older models keep the old name.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params

    # --- weights -----------------------------------------------------------------------------
    def load_weights(self, state_dict: dict[str, Any]) -> None:
        own = self.model.state_dict()
        unknown = [k for k in state_dict if k not in own]
        if unknown:
            raise KeyError(f"load_weights: {len(unknown)} names not in the engine's model, e.g. {unknown[0]!r}")
        with torch.no_grad():
            for name, value in state_dict.items():
                own[name].copy_(value.to(own[name].device, own[name].dtype))

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
        gen = torch.Generator(device=self.device).manual_seed(params.seed)
        out: list[list[Completion]] = [[] for _ in prompts]
        # Longest first: similar lengths share a batch, so little padding is prefilled.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        per_batch = max(1, self.batch_size // n)
        for start in range(0, len(order), per_batch):
            idx = order[start : start + per_batch]
            for i, comps in zip(idx, self._generate_batch([prompts[i] for i in idx], n, params, gen), strict=True):
                for c in comps:
                    c.prompt_index = i
                out[i] = comps
        return out

    def _generate_batch(
        self, prompts: list[list[int]], n: int, params: SamplingParams, gen: torch.Generator
    ) -> list[list[Completion]]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
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
        last_pos = pos[:, -1]
        eos = torch.tensor(sorted(self.eos_ids), device=self.device)
        for t in range(params.max_new_tokens):
            token, logp = sample(logits, params, gen)
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
                active, token, mask, last_pos = active[sel], token[sel], mask[sel], last_pos[sel]
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
                    prompt_index=p_i, prompt_ids=list(prompt), response_ids=resp,
                    text=self.tokenizer.decode(text_ids, skip_special_tokens=False),
                    logprobs=logps[r], finish_reason=finish[r],  # type: ignore[arg-type]
                ))
            result.append(group)
        return result


def sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return (token, log p(token)) under the sampling distribution.

    p = softmax(filter(logits / T)), filter = top-k then top-p (nucleus) masking to -inf.
    Greedy (T = 0) takes the argmax and reports its log-prob at T = 1.
    """
    if params.temperature == 0:
        logp = torch.log_softmax(logits, -1)
        token = logp.argmax(-1)
        return token, logp.gather(-1, token[:, None]).squeeze(-1)
    scores = logits / params.temperature
    if params.top_k > 0 and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, sorted_idx = torch.sort(scores, descending=True, dim=-1)
        cum = torch.softmax(sorted_scores, -1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop_sorted = (cum - torch.softmax(sorted_scores, -1)) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_idx, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    logp = torch.log_softmax(scores, -1)
    token = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(-1)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    cfg = getattr(model, "generation_config", None)
    for value in (getattr(cfg, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id: the engine cannot tell where a response ends")
    return ids
