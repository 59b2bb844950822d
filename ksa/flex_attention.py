"""KSA attention through FlexAttention on the prefix layout (see ksa/attention.py).

Each slot of the prefix layout is described by (doc, is_summary, chunk, pos): pos is the text
position within its sequence for text, the summary's index j (0 <= j < S) within its chunk for a
summary. On that description the KSA rule of ksa/mask.py reads, for q and k of the same sequence,

    summary q (chunk c, j):  k in chunk c and (k is text or j_k <= j)
    text q (chunk c, pos t): k text with pos_k <= t and c - c_k <= W,  or  k summary with c - c_k > W

(a text query never sees a summary of its own chunk: that summary comes after all the chunk's text).
The BlockMask is built here directly, evaluating the rule one slab of 128-row tiles at a time, so the
L x L mask never exists in memory and no compile is needed for it.
"""

from __future__ import annotations

import warnings
from functools import lru_cache, partial

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

TILE = 128
SLAB_COUNTS = 1 << 24  # intervals_block_mask: key counts held at once (one slab of query tiles)


def flex_prefix_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    seq_lens: tuple[int, ...],
    chunk: int,
    summaries: int,
    window: int,
    scale: float,
    summaries_visible: bool,
    block_mask: BlockMask | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + KSA mask) v with q, k, v ([B, H, L, D]) already in prefix layout."""
    if block_mask is None:
        block_mask = prefix_block_mask(seq_lens, chunk, summaries, window, summaries_visible, q.device)
    return run_flex(q, k, v, block_mask, scale)


def run_flex(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None, *, between_graphs: bool = False
) -> torch.Tensor:
    """FlexAttention of q [B, Hq, L, D] and k, v [B, Hkv, L, D] under `block_mask`, by where it runs:
    inside a compiled layer as a plain call traced into the layer's graph, or with `between_graphs`
    (for rows padded to a few bucket lengths) outside it (`flex_between_graphs`); on CUDA otherwise
    through the compiled kernel; on the CPU otherwise unfused (forward only: small tests)."""
    gqa = q.shape[1] != k.shape[1]
    compiling = torch.compiler.is_compiling()
    if compiling and not between_graphs:
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    if q.is_cuda or compiling:
        return flex_between_graphs(q, k, v, block_mask, scale, gqa)
    with warnings.catch_warnings():  # the unfused path is expected on the CPU
        warnings.simplefilter("ignore", UserWarning)
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)


@torch.compiler.disable
def flex_between_graphs(q, k, v, block_mask: BlockMask, scale: float | None, gqa: bool) -> torch.Tensor:
    """The compiled FlexAttention kernel, kept out of a compiled decoder layer's graph (a graph break
    around it). A layer's graph is dynamic in the row length (golong.models.compile_layers), and
    FlexAttention lowered with symbolic lengths is the least travelled path (on the CPU inductor's
    flex template for a plain shared-prompt mask fails to build so). Called from here it is compiled
    with static shapes, once per row length: callers pad rows to a few bucket lengths, and keep
    Python numbers that differ between layers (a KSA window) out of the mask_mod, whose closure the
    compiled kernel is specialised on (tensors there are inputs)."""
    return compiled_flex_attention(_compile_mode)(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)


_compile_mode: str | None = None


def set_compile_mode(mode: str | None) -> None:
    """The torch.compile mode of flex_between_graphs for this process: None (inductor's default tile
    configuration) or "max-autotune-no-cudagraphs" (inductor times several forward and backward tile
    configurations once per shape and keeps the fastest: slower first compiles)."""
    global _compile_mode
    _compile_mode = mode


@lru_cache(maxsize=2)
def compiled_flex_attention(mode: str | None = None):
    """FlexAttention through torch.compile (its fused kernels), built once per process and mode."""
    return torch.compile(flex_attention, dynamic=False, mode=mode)


def slot_tables(seq_lens: tuple[int, ...], chunk: int, summaries: int, device) -> tuple[torch.Tensor, ...]:
    """(doc, is_summary, chunk, pos) IntTensors[L] describing every slot of the packed prefix layout."""
    docs, sums, chunks, poss = [], [], [], []
    for d, text_len in enumerate(seq_lens):
        n_sum = (text_len // chunk) * summaries
        s, t = torch.arange(n_sum), torch.arange(text_len)
        docs.append(torch.full((n_sum + text_len,), d))
        sums.append(torch.cat([torch.ones(n_sum), torch.zeros(text_len)]))
        chunks.append(torch.cat([s // summaries, t // chunk]))
        poss.append(torch.cat([s % summaries, t]))
    return tuple(torch.cat(x).to(device=device, dtype=torch.int32) for x in (docs, sums, chunks, poss))


def prefix_rule(q_info, k_info, window: int, summaries_visible: bool):
    """The KSA rule on slot descriptions (tuples of broadcastable tensors from slot_tables)."""
    q_doc, q_sum, q_chunk, q_pos = q_info
    k_doc, k_sum, k_chunk, k_pos = k_info
    q_sum, k_sum = q_sum.bool(), k_sum.bool()
    dist = q_chunk - k_chunk
    own = q_sum & (dist == 0) & (~k_sum | (k_pos <= q_pos))
    text = ~k_sum & (k_pos <= q_pos) & (dist <= window)
    if summaries_visible:
        text = text | (k_sum & (dist > window))
    return (q_doc == k_doc) & (own | (~q_sum & text))


def rule_mask_mod(tables, rule):
    """FlexAttention mask_mod of `rule(q_info, k_info)` on slot tables (lookups into them)."""

    def _mod(b, h, q_idx, kv_idx):
        return rule(tuple(t[q_idx] for t in tables), tuple(t[kv_idx] for t in tables))

    return _mod


@lru_cache(maxsize=16)
def prefix_block_mask(
    seq_lens: tuple[int, ...], chunk: int, summaries: int, window: int, summaries_visible: bool, device
) -> BlockMask:
    """BlockMask of the KSA rule on the prefix layout with TILE x TILE tiles (full tiles kept apart)."""
    tables = slot_tables(seq_lens, chunk, summaries, device)
    return rule_block_mask(tables, partial(prefix_rule, window=window, summaries_visible=summaries_visible))


def rule_block_mask(tables: tuple[torch.Tensor, ...], rule) -> BlockMask:
    """BlockMask of `rule(q_info, k_info)` over slot tables whose first table is the doc id (>= 0).

    The rule is evaluated one slab of TILE-row tiles at a time (never the whole L x L mask); tiles
    where it holds everywhere are listed as full tiles, so the kernel skips the elementwise mask there."""
    device = tables[0].device
    length = tables[0].numel()
    n_tiles = -(-length // TILE)
    kv_info = tuple(pad_table(t, n_tiles * TILE) for t in tables)
    any_tile = torch.zeros(n_tiles, n_tiles, dtype=torch.bool, device=device)
    all_tile = torch.zeros_like(any_tile)
    rows_per_slab = max(1, (1 << 27) // (TILE * TILE * n_tiles))  # ~128M mask entries per slab
    for r0 in range(0, n_tiles, rows_per_slab):
        r1 = min(n_tiles, r0 + rows_per_slab)
        q_info = tuple(t[r0 * TILE : r1 * TILE, None] for t in kv_info)
        valid = rule(q_info, tuple(t[None, :] for t in kv_info))
        valid &= kv_info[0][None, :] >= 0  # padding slots (doc -1) are never valid
        tiles = valid.view(r1 - r0, TILE, n_tiles, TILE)
        any_tile[r0:r1] = tiles.any(3).any(1)
        all_tile[r0:r1] = tiles.all(3).all(1)
    # a tile that holds padding query rows has all_tile False there already through `valid`
    return tiles_block_mask(any_tile, all_tile, rule_mask_mod(tables, rule), length)


def intervals_block_mask(intervals: torch.Tensor, mask_mod, length: int) -> BlockMask:
    """BlockMask of a mask given, per query, as disjoint key intervals: `intervals` IntTensor [L, 2k]
    holds (lo_1, hi_1, ..., lo_k, hi_k), inclusive, hi < lo for an empty one; `mask_mod` must say the
    same pair by pair. The keys a query sees in a TILE-wide key tile are the sum of its intervals'
    overlaps with the tile: a tile pair is partial when some query row of the q tile sees some key,
    full when every row sees all TILE keys. Computed one slab of q tiles at a time: O(L * L / TILE)
    integers in all and no compilation, where evaluating `mask_mod` on every pair costs O(L^2)."""
    device = intervals.device
    n_tiles = -(-length // TILE)
    empty = intervals.new_tensor([0, -1]).repeat(intervals.shape[1] // 2)
    iv = torch.cat([intervals.int(), empty.int().expand(n_tiles * TILE - length, -1)])  # tail rows see nothing
    k0 = torch.arange(n_tiles, device=device, dtype=torch.int32)[None] * TILE
    any_tile = torch.zeros(n_tiles, n_tiles, dtype=torch.bool, device=device)
    all_tile = torch.zeros_like(any_tile)
    rows = max(1, SLAB_COUNTS // (TILE * n_tiles))  # q tiles per slab
    for r0 in range(0, n_tiles, rows):
        r1 = min(n_tiles, r0 + rows)
        part = iv[r0 * TILE : r1 * TILE]
        seen = torch.zeros(part.shape[0], n_tiles, dtype=torch.int32, device=device)
        for lo, hi in zip(part[:, 0::2].unbind(1), part[:, 1::2].unbind(1), strict=True):
            seen += (torch.minimum(hi[:, None], k0 + TILE - 1) - torch.maximum(lo[:, None], k0) + 1).clamp_(min=0)
        seen = seen.view(r1 - r0, TILE, n_tiles)
        any_tile[r0:r1] = (seen > 0).any(1)
        all_tile[r0:r1] = (seen == TILE).all(1)
    if length % TILE:  # a ragged last key tile is never full (its tail keys do not exist)
        all_tile[:, -1] = False
    return tiles_block_mask(any_tile, all_tile, mask_mod, length)


def tiles_block_mask(any_tile: torch.Tensor, all_tile: torch.Tensor, mask_mod, length: int) -> BlockMask:
    """A BlockMask from bool [nq, nk] tile tables: tiles where some (query, key) pair is visible, and
    tiles where every pair is (the kernel skips `mask_mod` there); TILE-sized tiles, L = `length`."""
    kv_num, kv_idx = _tile_lists(any_tile & ~all_tile)
    full_num, full_idx = _tile_lists(all_tile)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=TILE, mask_mod=mask_mod,
                                    seq_lengths=(length, length))


def pad_table(t: torch.Tensor, length: int) -> torch.Tensor:
    """Pad a slot table to `length` with -1 (a doc id no query has)."""
    return torch.cat([t, t.new_full((length - t.numel(),), -1)])


def _tile_lists(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool [nq, nk] -> (count [1, 1, nq], column indices [1, 1, nq, nk] with the set ones first, ascending)."""
    num = tiles.sum(-1, dtype=torch.int32)
    idx = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return num[None, None], idx[None, None]
