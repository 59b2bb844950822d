"""Shared-prefix (cascade) decode attention for the static engine: a GRPO group's prompt K/V stored
once and read once per decode step for all the group's rows.

Layout (golong/rollout/static.py, `share_prefix`): the rows of one group sit in a block of `width`
consecutive slots; per layer, the block's prompt K/V is one prefix row [blocks, Hkv, P, D] and each
slot's own (response) K/V one row [rows, Hkv, R, D]. A decode query of row r (block r // width)
attends keys prefix[0 : prefix_len[block]] then own[0 : own_len[r]]: exactly the keys of
prompt + response so far, which is what attention over the row's full sequence attends.

Attention over a key set split in two parts A (prefix) and B (own) is a two-part softmax:
  o_X   = softmax(s_X) @ V_X,  lse_X = log sum_j exp(s_X[j]),  s = q . k * scale   (X = A, B)
  m     = max(lse_A, lse_B)
  out   = (e^{lse_A - m} o_A + e^{lse_B - m} o_B) / (e^{lse_A - m} + e^{lse_B - m})
which equals softmax over the concatenated keys (softmax(s)[j] = e^{s_j - lse}, lse = log(e^{lse_A} +
e^{lse_B})). Scores, lse and the merge are float32; the max shift m keeps the exponentials finite.
For part A the queries of a block's rows are stacked: q [width * q_per_kv, D] per (block, kv head)
against the one prefix K, so a step reads each block's prefix once, not `width` times.

Masks are additive biases by length (0 visible, NEG hidden). NEG is finite, not -inf: a block with no
prefix (a free block inside the batch) then gives lse_A ~ NEG and weight exactly 0 instead of NaN;
part B always holds the row's current token, so lse_B is a real number.
"""

from __future__ import annotations

import torch

NEG = -1e30  # "minus infinity" that stays finite through logsumexp (see the module docstring)


def length_bias(lengths: torch.Tensor, span: int) -> torch.Tensor:
    """[N, span] float32: 0 at key index j < lengths[n], NEG elsewhere."""
    hidden = torch.arange(span, device=lengths.device)[None, :] >= lengths[:, None]
    return torch.zeros(hidden.shape, dtype=torch.float32, device=lengths.device).masked_fill(hidden, NEG)


def partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax(s) @ v, logsumexp(s)) over one part of the keys; s = q k^T * scale + bias (float32).
    q [N, Hkv, M, D], k / v [N, Hkv, S, D], bias [N, S]; returns o [N, Hkv, M, D] (v's dtype), lse
    [N, Hkv, M] (float32)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale + bias[:, None, None]
    lse = torch.logsumexp(scores, -1)
    probs = torch.exp(scores - lse[..., None]).to(v.dtype)  # softmax(s), from the lse just taken
    return torch.matmul(probs, v), lse


def merge_parts(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """Softmax attention over keys A + B from each part's (o, lse) (formula: module docstring); float32.
    o [..., D], lse [...]; lse_b must be finite (part B non-empty)."""
    m = torch.maximum(lse_a, lse_b)
    w_a, w_b = torch.exp(lse_a - m), torch.exp(lse_b - m)
    return (o_a.float() * w_a[..., None] + o_b.float() * w_b[..., None]) / (w_a + w_b)[..., None]


def cascade_attention(q: torch.Tensor, k_prefix: torch.Tensor, v_prefix: torch.Tensor, prefix_bias: torch.Tensor,
                      k_own: torch.Tensor, v_own: torch.Tensor, own_bias: torch.Tensor, scale: float,
                      kernel: str = "torch") -> torch.Tensor:
    """One decode query per row over its block's prefix and its own keys (module docstring).

    q [B, Hkv, G, D] (G query heads per KV head, query head h = kv head h // G), B = blocks * width
    rows, row r in block r // width; k/v_prefix [blocks, Hkv, P, D] with prefix_bias [blocks, P];
    k/v_own [B, Hkv, R, D] with own_bias [B, R]. Returns [B, Hkv, G, D] in q's dtype.
    kernel "triton": each part through ksa/triton_decode.py's split-K kernel (scores never leave the
    chip), the splits of both parts merged by the same log-sum-exp rule."""
    b, kv_heads, g, d = q.shape
    blocks = k_prefix.shape[0]
    width = b // blocks
    stacked = q.view(blocks, width, kv_heads, g, d).transpose(1, 2).reshape(blocks, kv_heads, width * g, d)
    if kernel == "triton":
        from ksa.triton_decode import decode_partials, merge_key_parts, stacked_to_rows

        bias_a = prefix_bias[:, None, None, :].expand(blocks, width, 1, prefix_bias.shape[-1])
        prefix = stacked_to_rows(*decode_partials(stacked, k_prefix, v_prefix, bias_a, scale, g, 1), width)
        own = decode_partials(q, k_own, v_own, own_bias[:, None, None, :], scale, g, 1)
        return merge_key_parts([prefix, own]).to(q.dtype)
    o_a, lse_a = partial_attention(stacked, k_prefix, v_prefix, prefix_bias, scale)
    o_a = o_a.view(blocks, kv_heads, width, g, d).transpose(1, 2).reshape(b, kv_heads, g, d)
    lse_a = lse_a.view(blocks, kv_heads, width, g).transpose(1, 2).reshape(b, kv_heads, g)
    o_b, lse_b = partial_attention(q, k_own, v_own, own_bias, scale)
    return merge_parts(o_a, lse_a, o_b, lse_b).to(q.dtype)


def fit_budget(budget: int, width: int, blocks: int, rows: int, prefix_bytes: int, row_bytes: int) -> tuple[int, int, int]:
    """(width, blocks, rows) cut so that blocks * prefix_bytes + rows * row_bytes <= budget: first the
    block width (rows one prefix can serve), then the blocks, then the rows (>= blocks * width).
    A budget that holds no block of one row is a ValueError naming the fix."""
    if prefix_bytes + row_bytes > budget:
        raise ValueError(
            f"rollout.kv_budget_gb={budget / 1024**3:g} holds no prompt + response "
            f"(one needs {(prefix_bytes + row_bytes) / 1024**3:.3g} GiB); raise the budget or shorten prompts"
        )
    width = min(width, (budget - prefix_bytes) // row_bytes)
    blocks = min(blocks, budget // (prefix_bytes + width * row_bytes))
    return width, blocks, min(rows, (budget - blocks * prefix_bytes) // row_bytes)
