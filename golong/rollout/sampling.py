"""Sampling on the device, shared by golong's rollout engines.

Every sample draws from its own counter-based random stream keyed by (seed, prompt index, sample
index, step), so a completion does not depend on which other rows share its batch, and the
log-probability of each drawn token under the sampler's distribution comes with it.
"""

from __future__ import annotations

from typing import Any

import torch

from golong.rollout.base import SamplingParams

MASK32 = 0xFFFFFFFF


def mix32(x: Any) -> Any:
    """A 32-bit integer hash (xorshift-multiply rounds); works on Python ints and int64 tensors.

    Multipliers stay below 2^31 so x * c < 2^63 never overflows int64.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & MASK32
    return x ^ (x >> 16)


def row_key(seed: int, prompt: int, sample: int) -> int:
    """The random stream of one sample: key = h(h(h(seed) ^ prompt) ^ sample)."""
    return mix32(mix32(mix32(seed & MASK32) ^ (prompt & MASK32)) ^ (sample & MASK32))


def noise_columns(vocab: int, device: Any = None) -> torch.Tensor:
    """v * golden for every token id v < vocab (int64): the per-column offsets of uniform_noise's hash.
    A compiled sampler takes them as an input rather than computing them from an index (inductor
    multiplied its int32 index by the 32-bit constant, which Triton rejected: H200, torch 2.11)."""
    return torch.arange(vocab, device=device, dtype=torch.int64) * 0x9E3779B1


def uniform_noise(keys: torch.Tensor, steps: torch.Tensor, vocab: int, columns: torch.Tensor | None = None) -> torch.Tensor:
    """u[b, v] in (0, 1) from h(h(key_b ^ h(step_b)) + v * golden): the same numbers for a row whatever
    else is in the batch. `columns`: noise_columns(vocab), when the caller keeps them."""
    r = mix32(keys ^ mix32(steps & MASK32))
    cols = noise_columns(vocab, keys.device) if columns is None else columns
    h = mix32((r[:, None] + cols[None, :]) & MASK32)
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def processed_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """log p of the sampler: log_softmax(filter(logits / T)); filter = top-k, then top-p to -inf.

    Top-p drops a token when the mass of the tokens ranked before it already reaches top_p (the
    first token always stays). Greedy (T = 0) uses T = 1 and no filter.
    """
    if params.temperature == 0:
        return torch.log_softmax(logits, -1)
    scores = logits / params.temperature
    if 0 < params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        probs = torch.softmax(sorted_scores, -1)
        drop_sorted = (probs.cumsum(-1) - probs) >= params.top_p
        scores = scores.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    return torch.log_softmax(scores, -1)


def sample_rows(
    logits: torch.Tensor, params: SamplingParams, keys: torch.Tensor, steps: torch.Tensor,
    columns: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token, log p(token)) per row. Sampling is Gumbel-max, token = argmax(log p + g),
    g = -log(-log u), an exact draw from p; greedy takes argmax(log p). `columns`: see uniform_noise."""
    logp = processed_logprobs(logits.float(), params)
    if params.temperature == 0:
        token = logp.argmax(-1)
    else:
        u = uniform_noise(keys, steps, logp.shape[-1], columns)
        token = (logp - torch.log(-torch.log(u))).argmax(-1)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)


def token_ids(values: Any) -> set[int]:
    """The ids in a mix of None, ints and lists of ints (eos_token_id comes in all three forms)."""
    ids: set[int] = set()
    for value in values:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Where a response ends: the model's generation_config eos_token_id(s) plus the tokenizer's."""
    cfg = getattr(model, "generation_config", None)
    ids = token_ids((getattr(cfg, "eos_token_id", None), tokenizer.eos_token_id))
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id: the engine cannot tell where a response ends")
    return ids
