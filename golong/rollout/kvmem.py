"""KV-cache bytes of one decoded sequence, from the model config, and admission under a byte budget.

Per layer, the K/V entries one sequence of L text tokens holds (one entry = K and V of every KV head):
  full attention:                     L
  sliding window w (tokens):          min(L, w)
  KSA layer, window W chunks of C, S summaries per chunk (ksa/cache.py):
      W*C >= L  ->  L                 (the window covers everything: text only, no summaries kept)
      else      ->  min(L, (W+1)*C) + (L // C) * S      (text ring + one summary list)
bytes = sum(entries) * 2 (K and V) * kv_heads * head_dim * element size.

So a full-attention model's KV grows with L in every layer, while a KSA hybrid's small-window
layers stay near (W+1)*C + L*S/C: the same budget admits more KSA sequences at long L.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Any

import torch

from ksa import is_ksa


def layer_entries(length: int, *, window: int | None = None, chunk: int | None = None,
                  summaries: int = 1, sliding: int | None = None) -> int:
    """K/V entries one layer keeps for a sequence of `length` tokens (formulas in the module docstring)."""
    if window is not None and chunk is not None:
        if window * chunk >= length:
            return length
        return min(length, (window + 1) * chunk) + (length // chunk) * summaries
    if sliding is not None:
        return min(length, sliding)
    return length


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_bytes_per_sequence(config: Any, length: int, element_size: int = 2) -> int:
    """Bytes of K/V one sequence of `length` tokens needs in the decode cache of a model with `config`."""
    layers = config.num_hidden_layers
    per_entry = entry_bytes(config, element_size)
    if is_ksa(config):
        chunk, summaries = config.ksa_chunk, config.ksa_summaries
        entries = sum(layer_entries(length, window=w, chunk=chunk, summaries=summaries) for w in config.ksa_windows)
        return entries * per_entry
    types = list(getattr(config, "layer_types", None) or ["full_attention"] * layers)
    sliding = getattr(config, "sliding_window", None)
    entries = sum(layer_entries(length, sliding=sliding if t == "sliding_attention" else None) for t in types)
    return entries * per_entry


def read_entries(config: Any, prefix: int, lengths: list[int]) -> int:
    """K/V entries (all layers) one decode step must read for a block of rows of `lengths` text tokens
    that share a `prefix`-token prompt stored once (prefix 0: every row holds its whole sequence).

    Per layer: a full-attention layer, or a KSA layer whose window covers the row (W*C >= L), reads the
    prompt once and each row's own L - P tokens. A KSA ring layer reads the prompt's last window of
    text (from chunk P//C - W on, ksa.static_cache.prompt_start) and its P//C summaries once, and per
    row its own text within the ring ((W+1)*C) and the summaries of its own whole chunks; without a
    shared prompt that is layer_entries(L). Sliding-window layers read min(L, w) per row. Layers of one
    kind are counted once and multiplied (this runs every decode step)."""
    if not lengths:
        return 0
    if not is_ksa(config):
        types = dict(_counts(tuple(getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers)))
        sliding = getattr(config, "sliding_window", None)
        n_sliding = types.get("sliding_attention", 0) if sliding is not None else 0
        full = prefix + sum(n - prefix for n in lengths)
        windowed = sum(min(n, sliding) for n in lengths) if n_sliding else 0
        return (sum(types.values()) - n_sliding) * full + n_sliding * windowed
    chunk, summaries = config.ksa_chunk, config.ksa_summaries
    return sum(count * _ksa_read(window, chunk, summaries, prefix, lengths)
               for window, count in _counts(tuple(config.ksa_windows)))


@lru_cache(maxsize=64)
def _counts(kinds: tuple) -> tuple[tuple[Any, int], ...]:
    """(kind, how many layers have it), once per model."""
    return tuple(Counter(kinds).items())


def _ksa_read(window: int, chunk: int, summaries: int, prefix: int, lengths: list[int]) -> int:
    """read_entries for one KSA layer of `window` chunks."""
    ring = [n for n in lengths if window * chunk < n]
    total = sum(n - prefix for n in lengths if window * chunk >= n)
    if len(ring) < len(lengths):
        total += prefix  # a row the window covers reads the whole prompt
    if not ring:
        return total
    if not prefix:
        return total + sum(layer_entries(n, window=window, chunk=chunk, summaries=summaries) for n in ring)
    if len(ring) == len(lengths):
        total += prefix - max(0, (prefix // chunk - window) * chunk)  # the prompt's text still in the window
    total += (prefix // chunk) * summaries
    return total + sum(min(n - prefix, (window + 1) * chunk) + (n // chunk - prefix // chunk) * summaries for n in ring)


def entry_bytes(config: Any, element_size: int = 2) -> int:
    """Bytes of one K/V entry of one layer: K and V of every KV head."""
    return 2 * (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * _head_dim(config) * element_size


def model_kv_bytes_fn(model: Any):
    """length -> KV bytes of one sequence, for `model` (its config and parameter dtype); None when
    the config does not describe a decoder this accounting knows (no layer / head counts)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    size = next(base.parameters()).element_size()
    try:
        kv_bytes_per_sequence(base.config, 1, size)
    except (AttributeError, TypeError):
        return None
    return lambda length: kv_bytes_per_sequence(base.config, length, size)


def plan_batches(lengths: list[int], n: int, max_new_tokens: int, *, cap: int, budget: int | None,
                 seq_bytes) -> list[list[int]]:
    """Prompt indices per batch, longest prompts first. A batch holds whole groups (n rows a prompt),
    at most `cap` rows, and, with a byte `budget`, at most budget // (n * seq_bytes(width + max_new_tokens))
    prompts, width = its longest (first) prompt, since rows are left-padded to it. A group that alone
    exceeds the budget still runs (alone): the budget cannot split a group's shared prefill."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    per_cap = max(1, cap // n)
    batches, start = [], 0
    while start < len(order):
        k = per_cap
        if budget is not None:
            k = max(1, min(k, budget // max(1, n * seq_bytes(lengths[order[start]] + max_new_tokens))))
        batches.append(order[start : start + k])
        start += k
    return batches


def cache_nbytes(cache: Any) -> int:
    """Bytes of the K/V tensors a transformers Cache (or a KSACache) holds now."""
    if hasattr(cache, "nbytes"):
        return int(cache.nbytes())
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total
