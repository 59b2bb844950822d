"""The KSA attention mask on the interleaved layout (see ksa/layout.py).

For expanded indices q (query) and k (key): chunk(i) = i // B, is_summary(i) = i % B >= C,
dist = chunk(q) - chunk(k), W = the layer's window in chunks.

  summary query:  sees its own chunk only, causally   (the C text tokens, then summaries up to itself)
  text query:     causal, and for each earlier slot either
                    - text of chunks within the window (dist <= W), or
                    - summaries of chunks older than the window (dist > W).

  valid = (q_sum & chunk(k) == chunk(q) & causal)
        | (!q_sum & causal & ((dist <= W & !k_sum) | (k_sum & dist > W)))

A window at least as long as the sequence (in chunks) makes a text query plain causal attention
over text: the "full" layers of the hybrid. `summaries_visible=False` removes the old summaries,
giving Sliding Chunk Attention (SCA), the ablation without summary tokens.
"""

from __future__ import annotations

import torch

from ksa.layout import expanded_length


def ksa_valid(q, k, chunk: int, summaries: int, window: int, summaries_visible: bool = True):
    """Elementwise mask rule on expanded indices (tensors or ints that broadcast)."""
    block = chunk + summaries
    qc, kc = q // block, k // block
    q_sum, k_sum = (q % block) >= chunk, (k % block) >= chunk
    causal = k <= q
    dist = qc - kc
    own_chunk = q_sum & (kc == qc) & causal
    text_ok = (dist <= window) & ~k_sum
    if summaries_visible:
        text_ok = text_ok | (k_sum & (dist > window))
    return own_chunk | (~q_sum & causal & text_ok)


def dense_mask(
    text_len: int, chunk: int = 8, summaries: int = 1, window: int = 128, summaries_visible: bool = True
) -> torch.Tensor:
    """BoolTensor[L, L], True where query row may attend key column (L = expanded length)."""
    length = expanded_length(text_len, chunk, summaries)
    idx = torch.arange(length)
    return ksa_valid(idx[:, None], idx[None, :], chunk, summaries, window, summaries_visible)


def mask_mod(chunk: int = 8, summaries: int = 1, window: int = 128, summaries_visible: bool = True):
    """FlexAttention `mask_mod(b, h, q_idx, kv_idx)` equal to `dense_mask` on the interleaved layout."""

    def _mod(b, h, q_idx, kv_idx):
        return ksa_valid(q_idx, kv_idx, chunk, summaries, window, summaries_visible)

    return _mod
