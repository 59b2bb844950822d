"""KSA attention: one function, three kernels that compute the same thing.

    ksa_attention(q, k, v, chunk=8, summaries=1, window=W, impl=...)  ->  softmax(q k^T * scale + mask) v

with the KSA mask of ksa/mask.py on the interleaved layout (one sequence per batch row, or several
packed along L with `seq_lens`). The kernels:

- "reference": the dense [L, L] mask through SDPA. Ground truth; memory O(L^2).
- "flex":      FlexAttention on the *prefix layout* (below) with a block-sparse BlockMask.
- "triton":    a FlashAttention-2 style Triton kernel that walks the prefix order's tiles but reads and
               writes the interleaved tensors in place (ksa/triton_attention.py).

Where a layer's window covers the whole sequence (one sequence; the hybrid's full layers, and every
layer below its window's length) the mask is plain causal attention over text plus, for each summary,
its own chunk: "flex" and "triton" then run causal SDPA over the text slots and a per-chunk attention
for the summaries (`_within_window`) instead of the KSA kernel, so short sequences cost what SDPA does.

Why a prefix layout: on the interleaved layout every 128x128 tile holds a summary column, so no tile
can be skipped and a block-sparse kernel is slower than full attention. Gathering, per sequence, all
summary slots first and the text after them,

    interleaved  t0..t7 s0 t8..t15 s1 ...   ->   prefix  s0 s1 ... s{N-1} | t0 t1 ... t{T-1}

makes the mask a few dense bands: text queries see a causal band of W chunks of text plus a prefix of
old summaries, summary queries see their own chunk. Attention is permutation-equivariant when queries
and keys are permuted together and the mask follows, so the outputs are gathered back afterwards.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ksa.layout import expand_positions, expanded_length
from ksa.mask import ksa_valid

IMPLS = ("reference", "flex", "triton")


class KSAAttentionError(ValueError):
    """Bad arguments to ksa_attention (shape, layout or implementation name)."""


def ksa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    chunk: int = 8,
    summaries: int = 1,
    window: int,
    impl: str = "reference",
    scale: float | None = None,
    summaries_visible: bool = True,
    seq_lens: list[int] | None = None,
    mask=None,
) -> torch.Tensor:
    """KSA attention on the interleaved expanded layout.

    q: [B, Hq, L, D]; k, v: [B, Hkv, L, D] with Hq % Hkv == 0 (GQA). Each batch row holds one sequence
    of text length T starting at text position 0 (L = expanded_length(T)), or, with `seq_lens`, several
    sequences of those text lengths concatenated along L, each with its own layout (chunking restarts
    at 0) and no attention between them. `window` is in chunks; scale defaults to D ** -0.5;
    summaries_visible=False gives Sliding Chunk Attention. Returns [B, Hq, L, D] in q's dtype;
    differentiable w.r.t. q, k, v (flex: backward needs a GPU). `mask`: `ksa_mask(...)` of the same
    arguments, built ahead (a compiled layer then only reads it); None builds it here (cached).
    """
    seq_lens = _check(q, k, v, chunk, summaries, window, impl, seq_lens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    opts = dict(chunk=chunk, summaries=summaries, window=window, scale=scale, summaries_visible=summaries_visible)
    if impl != "reference" and covers_sequence(seq_lens, chunk, window):
        order = mask if mask is not None else window_order(seq_lens[0], chunk, summaries, q.device)
        return _within_window(q, k, v, order, seq_lens[0], chunk, summaries, scale)
    if mask is None and impl != "triton":
        mask = ksa_mask(tuple(seq_lens), chunk, summaries, window, impl, summaries_visible, q.device)
    if impl == "reference":
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if impl == "triton":  # reads and writes the interleaved layout in place, through index arithmetic
        from ksa.triton_attention import triton_ksa_attention

        if torch.is_autocast_enabled(q.device.type):  # a custom kernel sits outside autocast: use its dtype
            dt = torch.get_autocast_dtype(q.device.type)
            q, k, v = q.to(dt), k.to(dt), v.to(dt)
        return triton_ksa_attention(q, k, v, seq_lens=tuple(seq_lens), **opts)
    from ksa.flex_attention import flex_prefix_attention

    perm, inv, block_mask = mask
    qp, kp, vp = (_Permute.apply(x, perm, inv) for x in (q, k, v))
    out = flex_prefix_attention(qp, kp, vp, seq_lens=tuple(seq_lens), block_mask=block_mask, **opts)
    return _Permute.apply(out, inv, perm)


def covers_sequence(seq_lens, chunk: int, window: int) -> bool:
    """True for one sequence whose every chunk lies within `window` of the last: then a text query sees
    all earlier text and no summary (plain causal attention over text), and a summary query its own
    chunk; `_within_window` computes that without the KSA kernel."""
    return len(seq_lens) == 1 and window >= (seq_lens[0] - 1) // chunk


class WindowOrder(NamedTuple):
    """What `_within_window` reads besides q, k, v: one sequence's prefix order and its inverse, built
    before the layers run (`ksa_mask`), so a compiled layer has no data-dependent op in its graph (a
    graph break inside a checkpointed compiled layer makes its recompute differ from its forward)."""

    perm: torch.Tensor
    inv: torch.Tensor


def window_order(text_len: int, chunk: int, summaries: int, device) -> WindowOrder:
    """The `WindowOrder` of one sequence of `text_len` tokens (the prefix order is cached per length)."""
    perm = prefix_order((text_len,), chunk, summaries, device)
    return WindowOrder(perm, inverse_order(perm))


def _within_window(q, k, v, order: WindowOrder, text_len: int, chunk: int, summaries: int, scale: float) -> torch.Tensor:
    """KSA attention of one sequence that its window covers: causal SDPA over the text slots, and for the
    summaries of each full chunk attention to that chunk's C text and S summary slots (summary j sees
    summaries up to j). Slots are gathered into the prefix order (summaries, then text) and back."""
    b, hq, _, d = q.shape
    n_chunks, n_sum = text_len // chunk, (text_len // chunk) * summaries
    perm, inv = order
    qp, kp, vp = (_Permute.apply(x, perm, inv) for x in (q, k, v))
    out = F.scaled_dot_product_attention(qp[:, :, n_sum:], kp[:, :, n_sum:], vp[:, :, n_sum:], is_causal=True, scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])  # fmt: skip
    if n_sum:
        def blocks(x):  # [b, h, L, d] -> [b, N, h, C + S, d]: each full chunk's text, then its summaries
            text = x[:, :, n_sum : n_sum + n_chunks * chunk].unflatten(2, (n_chunks, chunk))
            return torch.cat([text, x[:, :, :n_sum].unflatten(2, (n_chunks, summaries))], 3).transpose(1, 2)

        q_sum = qp[:, :, :n_sum].unflatten(2, (n_chunks, summaries)).transpose(1, 2)  # [b, N, hq, S, d]
        own = torch.ones(summaries, chunk + summaries, dtype=torch.bool, device=q.device).tril(chunk)
        sums = F.scaled_dot_product_attention(q_sum, blocks(kp), blocks(vp), attn_mask=own, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])  # fmt: skip
        out = torch.cat([sums.transpose(1, 2).reshape(b, hq, n_sum, d), out], 2)
    return _Permute.apply(out, inv, perm)


def ksa_mask(seq_lens: tuple[int, ...], chunk: int, summaries: int, window: int, impl: str, summaries_visible: bool, device):
    """What kernel `impl` reads besides q, k, v for one window: the dense [L, L] mask ("reference"), the
    prefix order, its inverse and the BlockMask ("flex"), nothing ("triton": index arithmetic); where
    the window covers the one sequence, "flex" and "triton" read the `WindowOrder` of `_within_window`."""
    seq_lens = tuple(int(t) for t in seq_lens)
    if impl != "reference" and covers_sequence(seq_lens, chunk, window):
        return window_order(seq_lens[0], chunk, summaries, device)  # ksa_attention takes the within-window path
    if impl == "reference":
        return packed_dense_mask(seq_lens, chunk, summaries, window, summaries_visible, device)
    if impl == "flex":
        from ksa.flex_attention import prefix_block_mask

        perm = prefix_order(seq_lens, chunk, summaries, device)
        return perm, inverse_order(perm), prefix_block_mask(seq_lens, chunk, summaries, window, summaries_visible, device)
    return None


class _Permute(torch.autograd.Function):
    """x.index_select(2, perm) whose backward is the inverse gather (index_select's own backward is a
    scatter-add with atomics, several times slower than the gather)."""

    @staticmethod
    def forward(ctx, x, perm, inv):
        ctx.save_for_backward(inv)
        return x.index_select(2, perm)

    @staticmethod
    def backward(ctx, grad):
        (inv,) = ctx.saved_tensors
        return grad.index_select(2, inv), None, None


@lru_cache(maxsize=8)
def packed_dense_mask(
    seq_lens: tuple[int, ...], chunk: int, summaries: int, window: int, summaries_visible: bool, device
) -> torch.Tensor:
    """BoolTensor[L, L]: the KSA mask of each sequence on the diagonal, False between sequences."""
    blocks = []
    for text_len in seq_lens:  # ksa.mask.dense_mask, built on the target device (large L on a GPU)
        idx = torch.arange(expanded_length(text_len, chunk, summaries), device=device)
        blocks.append(ksa_valid(idx[:, None], idx[None, :], chunk, summaries, window, summaries_visible))
    return blocks[0] if len(blocks) == 1 else torch.block_diag(*blocks)


@lru_cache(maxsize=32)
def prefix_order(seq_lens: tuple[int, ...], chunk: int, summaries: int, device) -> torch.Tensor:
    """LongTensor[L]: interleaved index of each slot of the prefix layout.

    Per sequence (in order): its summary slots in order, then its text slots in order.
    """
    parts, start = [], 0
    for text_len in seq_lens:
        _, is_sum = expand_positions(text_len, chunk, summaries)
        idx = torch.arange(start, start + is_sum.numel())
        parts += [idx[is_sum], idx[~is_sum]]
        start += is_sum.numel()
    return torch.cat(parts).to(device)


def inverse_order(perm: torch.Tensor) -> torch.Tensor:
    """inv with inv[perm[i]] = i, so x_prefix.index_select(dim, inv) is back in interleaved order."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


def _check(q, k, v, chunk, summaries, window, impl, seq_lens) -> list[int]:
    if impl not in IMPLS:
        raise KSAAttentionError(f"unknown KSA attention impl {impl!r}; use one of {', '.join(IMPLS)}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise KSAAttentionError(f"q, k, v must be [B, H, L, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise KSAAttentionError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)} disagree on B, L or D")
    if q.shape[1] % k.shape[1]:
        raise KSAAttentionError(f"GQA needs Hq % Hkv == 0, got Hq={q.shape[1]}, Hkv={k.shape[1]}")
    if chunk < 1 or not 1 <= summaries <= chunk:
        raise KSAAttentionError(f"need chunk >= 1 and 1 <= summaries <= chunk, got {chunk}, {summaries}")
    if window < 0:
        raise KSAAttentionError(f"window must be >= 0 chunks, got {window}")
    length = q.shape[2]
    if seq_lens is None:
        text_len = _text_len(length, chunk, summaries)
        if text_len is None:
            raise KSAAttentionError(
                f"L={length} is no expanded length for chunk={chunk}, summaries={summaries}; pad the text, not the layout"
            )
        return [text_len]
    seq_lens = [int(t) for t in seq_lens]
    total = sum(expanded_length(t, chunk, summaries) for t in seq_lens)
    if min(seq_lens, default=0) < 1 or total != length:
        raise KSAAttentionError(
            f"seq_lens {seq_lens} expand to {total} slots but L={length}; give each packed sequence's text length"
        )
    return seq_lens


def _text_len(length: int, chunk: int, summaries: int) -> int | None:
    """Inverse of expanded_length (None if `length` is not one): T = L - (L // B) * S, checked."""
    text_len = length - (length // (chunk + summaries)) * summaries
    return text_len if expanded_length(text_len, chunk, summaries) == length else None
