"""Shared-prompt rows on the KSA layout: the responses to one prompt packed behind one copy of it.

A *unit* is a prompt of P text tokens and its responses. Alone, each (prompt, response) of R tokens
would be laid out over P + R text tokens as in ksa/layout.py. Packed with one copy of the prompt:

- the prompt keeps its own layout: text at positions 0 .. P-1 and the summaries of its full chunks
  0 .. P//C - 1. A trailing partial chunk gets no summary here: each response completes it with
  different text, so that chunk's summary is the response's own.
- response m continues the prompt's chunking: its text takes positions P, P+1, ... (chunk = pos // C)
  and it owns the summaries of the chunks its tokens complete, P//C .. (P+R)//C - 1. The boundary
  chunk P//C (when P % C != 0) holds prompt text and response text; its summary reads both.

Each slot is described by (doc, is_summary, chunk, pos, member): doc is the unit, member -1 for the
prompt's slots and m for response m's, pos the text position (the summary's index j within its chunk
for a summary). The attention rule is the KSA rule on slot descriptions (ksa/flex_attention.py,
`prefix_rule`) plus one clause: a key is visible only if it is the prompt's or the query's own
response's, so responses never see each other. (Prompt queries never see a response already by
position: response text lies after every prompt position, response summaries in chunks the prompt's
queries cannot reach.) Every query sees exactly the slots it sees when its (prompt, response) is laid
out alone, with the same contents, so log-probs and gradients equal those of packing each pair alone
(tests/test_ksa_shared.py).

Slot order of a unit: its summary slots (the prompt's, then each response's), then its text in the
caller's order (prompt, response 1, ..., response G). Attention does not depend on the order (the
rule compares positions, not slot indices); this one keeps each unit's summaries in a contiguous
prefix, as the prefix layout of ksa/attention.py does, so a block-sparse kernel skips whole tiles.
It also makes every query's keys at most four intervals of slots, from which the BlockMask is counted
tile by tile without evaluating the rule on every pair (`shared_block_mask`).

A row may end in padding slots (`pad`: a length from a few buckets, so a compiled kernel meets few
shapes): a unit of its own that no real slot sees, each padding slot seeing itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from ksa.flex_attention import (
    TILE,
    flex_between_graphs,
    intervals_block_mask,
    pad_table,
    prefix_rule,
    rule_mask_mod,
    run_flex,
)
from ksa.pieces import pays_off, pieces_attention


@dataclass(eq=False)
class SharedLayout:
    """The slots of a shared-prompt row. Tables are IntTensors[L] (int32), positions LongTensor[L]."""

    units: tuple[tuple[int, tuple[int, ...]], ...]  # (prompt length, response lengths) per unit
    chunk: int
    summaries: int
    doc: torch.Tensor
    is_summary: torch.Tensor
    chunk_of: torch.Tensor
    pos: torch.Tensor  # text position; for a summary its index j within the chunk
    member: torch.Tensor  # -1: the prompt's; m: response m's
    positions: torch.Tensor  # RoPE position of each slot
    text_slots: torch.Tensor  # LongTensor[N]: slot of each text token, in the caller's text order
    pad: int = 0  # padding slots at the end (a unit of their own)

    @property
    def length(self) -> int:
        return self.doc.numel()

    @property
    def tables(self) -> tuple[torch.Tensor, ...]:
        """(doc, is_summary, chunk, pos, member): the slot descriptions the rule reads."""
        return self.doc, self.is_summary, self.chunk_of, self.pos, self.member


def shared_layout(
    units: Sequence[tuple[int, Sequence[int]]], chunk: int = 8, summaries: int = 1, device=None, pad: int = 0
) -> SharedLayout:
    """The layout of units (prompt length P >= 1, [response lengths]) packed one after another.

    The text of unit u is expected as P prompt tokens then each response's tokens, units in order
    (N = sum of P + sum of R text tokens); `text_slots` says where each of them goes. `pad` > 0 appends
    that many padding slots (a bucketed row length): one more unit of text slots at positions
    0 .. pad-1 with no summaries and no text of the caller's. The rule keeps units apart, so no real
    slot sees them, and each sees at least itself (every softmax row stays finite)."""
    units = tuple((int(p), tuple(int(r) for r in rs)) for p, rs in units)
    if chunk < 1 or not 1 <= summaries <= chunk:
        raise ValueError(f"need chunk >= 1 and 1 <= summaries <= chunk, got {chunk}, {summaries}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0 slots, got {pad}")
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("doc", "sum", "chunk", "pos", "member", "rope", "text")}
    start = 0
    for d, (prompt, responses) in enumerate(units):
        if prompt < 1 or min(responses, default=0) < 0:
            raise ValueError(f"unit {d}: need a prompt of >= 1 token and response lengths >= 0, got {prompt}, {responses}")
        spans = [(-1, 0, prompt)] + [(m, prompt, prompt + r) for m, r in enumerate(responses)]  # (member, first, end)
        sum_parts, text_parts = [], []
        for member, first, end in spans:
            c = _summary_chunks(first, end, chunk)
            c = c.repeat_interleave(summaries)
            j = torch.arange(summaries).repeat(c.numel() // summaries)
            sum_parts.append((member, c, j, c * chunk + ((j + 1) * chunk) // summaries - 1))
            text_parts.append((member, torch.arange(first, end)))
        n_sum = sum(c.numel() for _, c, _, _ in sum_parts)
        for member, c, j, rope in sum_parts:
            _append(cols, d, True, c, j, member, rope)
        for member, t in text_parts:
            _append(cols, d, False, t // chunk, t, member, t)
        n_text = sum(t.numel() for _, t in text_parts)
        cols["text"].append(torch.arange(start + n_sum, start + n_sum + n_text))
        start += n_sum + n_text
    if pad:
        t = torch.arange(pad)
        _append(cols, len(units), False, t // chunk, t, -1, t)
    cat = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in cols.items()}
    i32 = partial(torch.Tensor.to, device=device, dtype=torch.int32)
    return SharedLayout(
        units, chunk, summaries, i32(cat["doc"]), i32(cat["sum"]), i32(cat["chunk"]), i32(cat["pos"]),
        i32(cat["member"]), cat["rope"].to(device), cat["text"].to(device), pad,
    )


def shared_length(units: Sequence[tuple[int, Sequence[int]]], chunk: int = 8, summaries: int = 1) -> int:
    """Slots of `shared_layout(units, chunk, summaries)` without padding: every text token, plus S
    summaries per chunk completed by the prompt (P // C) or by a response ((P + R) // C - P // C)."""
    return sum(p + sum(rs) + summaries * (p // chunk + sum((p + r) // chunk - p // chunk for r in rs)) for p, rs in units)


def _summary_chunks(first: int, end: int, chunk: int) -> torch.Tensor:
    """The chunks whose last text token lies in [first, end): the summaries text [first, end) owns."""
    return torch.arange(first // chunk, end // chunk)


def _append(cols, doc: int, is_sum: bool, chunk: torch.Tensor, pos: torch.Tensor, member: int, rope: torch.Tensor) -> None:
    n = chunk.numel()
    cols["doc"].append(torch.full((n,), doc))
    cols["sum"].append(torch.full((n,), int(is_sum)))
    cols["chunk"].append(chunk)
    cols["pos"].append(pos)
    cols["member"].append(torch.full((n,), member))
    cols["rope"].append(rope)


def shared_rule(q_info, k_info, window: int, summaries_visible: bool = True):
    """The KSA rule on (doc, is_summary, chunk, pos, member) descriptions, keys limited to the prompt
    and the query's own response."""
    q_member, k_member = q_info[4], k_info[4]
    return prefix_rule(q_info[:4], k_info[:4], window, summaries_visible) & ((k_member < 0) | (k_member == q_member))


def shared_dense_mask(layout: SharedLayout, window: int, summaries_visible: bool = True) -> torch.Tensor:
    """BoolTensor[L, L] of the shared rule (the reference kernel's mask)."""
    tables = layout.tables
    return shared_rule(tuple(t[:, None] for t in tables), tuple(t[None, :] for t in tables), window, summaries_visible)


def shared_block_mask(layout: SharedLayout, window: int, summaries_visible: bool = True):
    """FlexAttention BlockMask of the shared rule, built from each slot's key intervals
    (`_attended_intervals`, ksa.flex_attention.intervals_block_mask): no compilation, no L x L mask,
    O(L^2 / TILE) work. Equal to create_block_mask's (tests/test_ksa_shared.py)."""
    n_tiles = -(-layout.length // TILE)
    tables = tuple(pad_table(t, n_tiles * TILE) for t in layout.tables)  # mask_mod may look past L in the last tile
    # the window as a tensor: layers of different windows share one compiled kernel per length
    w = torch.tensor(window, dtype=torch.int32, device=layout.doc.device)
    mask_mod = rule_mask_mod(tables, partial(shared_rule, window=w, summaries_visible=summaries_visible))
    return intervals_block_mask(_attended_intervals(layout, window, summaries_visible), mask_mod, layout.length)


def _span_starts(layout: SharedLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each (unit, member) span of the layout lies: IntTensor [n_spans, 5] of (first text slot,
    its text position, first summary slot, its chunk, summary chunks), spans in the order (unit 0's
    prompt, its responses, unit 1's prompt, ...), the padding unit last; and each slot's span index."""
    C, S = layout.chunk, layout.summaries
    rows, first_span, start = [], [], 0
    for p, rs in layout.units:
        first_span.append(len(rows))
        n_sum = S * (p // C + sum((p + r) // C - p // C for r in rs))
        text, summ = start + n_sum, start
        rows.append((text, 0, summ, 0, p // C))
        summ, text = summ + S * (p // C), text + p
        for r in rs:
            rows.append((text, p, summ, p // C, (p + r) // C - p // C))
            summ, text = summ + S * rows[-1][4], text + r
        start = text
    first_span.append(len(rows))
    rows.append((start, 0, start, 0, 0))  # the padding unit: text only (an empty span when pad = 0)
    spans = torch.tensor(rows, dtype=torch.int32, device=layout.doc.device)
    first = torch.tensor(first_span, dtype=torch.int32, device=layout.doc.device)
    return spans, first[layout.doc.long()] + layout.member + 1


def _attended_intervals(layout: SharedLayout, window: int, summaries_visible: bool = True) -> torch.Tensor:
    """IntTensor [L, 8]: the four key intervals (lo, hi, inclusive; hi < lo when empty) each slot
    attends under the shared rule, read off the slot order (per unit: the prompt's summaries, each
    response's, then the prompt's text and each response's) for query slot (chunk c, position t or
    summary index j) of member m with prompt length P:
      text query:    prompt text at positions [max(0, (c - W) C), min(t, P - 1)], its own response's
                     text at [max((c - W) C, P), t], and (summaries visible) the prompt's and its own
                     response's summaries of chunks <= c - W - 1;
      summary query: the text of chunk c (the prompt's part and its own response's part) and its own
                     span's summaries of chunk c up to itself (j_k <= j)."""
    C, S = layout.chunk, layout.summaries
    spans, span = _span_starts(layout)
    own, prompt = spans[span.long()].unbind(1), spans[(span - layout.member - 1).long()].unbind(1)
    text0, pos0, sum0, chunk0, n_chunks = own
    p_text0, _, p_sum0, _, p_chunks = prompt
    is_sum, c, t = layout.is_summary.bool(), layout.chunk_of, layout.pos
    plen = torch.where(layout.member < 0, t.new_tensor(1 << 30), pos0)  # P, for response slots (prompt slots: unbounded)
    is_resp = layout.member >= 0
    # text queries
    lo_pos = ((c - window) * C).clamp(min=0)
    text_hi1 = torch.minimum(t, plen - 1)
    text_lo2 = torch.where(is_resp, torch.maximum(lo_pos, pos0), t + 1)
    cut = c - window - 1  # the last chunk whose summaries a text query sees
    if not summaries_visible:
        cut = torch.full_like(cut, -1)
    p_last = torch.minimum(p_chunks - 1, cut)  # prompt summary chunks 0 .. p_last
    r_last = torch.where(is_resp, torch.minimum(chunk0 + n_chunks - 1, cut), chunk0 - 1)
    text_iv = [p_text0 + lo_pos, p_text0 + text_hi1, text0 + text_lo2 - pos0, text0 + t - pos0,
               p_sum0, p_sum0 + (p_last + 1) * S - 1, sum0, sum0 + (r_last - chunk0 + 1) * S - 1]
    # summary queries (t is j here)
    s_hi1 = torch.minimum(c * C + C - 1, plen - 1)
    s_lo2 = torch.where(is_resp, torch.maximum(c * C, pos0), c * C + C)
    mine = sum0 + (c - chunk0) * S
    sum_iv = [p_text0 + c * C, p_text0 + s_hi1, text0 + s_lo2 - pos0, text0 + c * C + C - 1 - pos0,
              mine, mine + t, sum0, sum0 - 1]
    return torch.stack([torch.where(is_sum, a, b) for a, b in zip(sum_iv, text_iv, strict=True)], 1).int()


@dataclass(frozen=True, eq=False)
class WindowPieces:
    """What `shared_ksa_attention` reads for a window that covers every unit of a shared row (the hybrid's
    full layers): no summary lies beyond the window, so a text slot attends causally to the text of its
    prompt and its own response only, and a summary slot to its chunk's text and its chunk's summaries up
    to its own. The text runs through ksa.pieces (unmasked fused-attention calls merged by log-sum-exp)."""

    units: tuple  # per unit ((prompt text start, P), ((response text start, R), ...)); the padding a unit of its own
    sum_slots: torch.Tensor  # LongTensor[n]: the summary slots
    sum_keys: torch.Tensor  # LongTensor[n, C + S]: each one's keys, its chunk's C text slots then its chunk's S summaries
    sum_mask: torch.Tensor  # BoolTensor[n, C + S]: summary j sees the chunk's summaries 0 .. j


def window_pieces(layout: SharedLayout, window: int) -> WindowPieces | None:
    """The `WindowPieces` of `layout` when `window` (chunks) covers each unit's text, else None."""
    C, S = layout.chunk, layout.summaries
    longest = max([p + max(rs, default=0) for p, rs in layout.units] + [layout.pad])
    if (longest - 1) // C > window:
        return None
    spans, span_of = _span_starts(layout)
    starts = spans[:, 0].tolist()
    units, i = [], 0
    for p, rs in layout.units:
        units.append(((starts[i], p), tuple(zip(starts[i + 1 : i + 1 + len(rs)], rs, strict=True))))
        i += 1 + len(rs)
    if layout.pad:
        units.append(((layout.length - layout.pad, layout.pad), ()))
    sum_slots = torch.nonzero(layout.is_summary).flatten()
    span = span_of[sum_slots].long()
    prompt_span = span - layout.member[sum_slots].long() - 1
    first, at = spans[span, 0].long()[:, None], spans[span, 1].long()[:, None]  # own span: first text slot, its position
    t = layout.chunk_of[sum_slots].long()[:, None] * C + torch.arange(C, device=sum_slots.device)
    text = torch.where(t < at, spans[prompt_span, 0].long()[:, None] + t, first + t - at)
    j = layout.pos[sum_slots].long()[:, None]
    own = sum_slots[:, None] - j + torch.arange(S, device=sum_slots.device)
    mask = torch.cat([torch.ones_like(text, dtype=torch.bool), torch.arange(S, device=j.device) <= j], 1)
    return WindowPieces(tuple(units), sum_slots, torch.cat([text, own], 1), mask)


@torch.compiler.disable
def window_pieces_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: WindowPieces, scale: float) -> torch.Tensor:
    """Attention of a shared row under a covering window (`WindowPieces`): q [B, Hq, L, D], k/v [B, Hkv, L, D].
    Between a compiled layer's graphs, as the FlexAttention of the other windows (the plan's sizes differ
    row to row). Its kernels are dispatcher ops: a selective checkpoint that keeps attention outputs keeps
    theirs."""
    gqa = q.shape[1] != k.shape[1]
    out = pieces_attention(q, k, v, plan, scale, gqa)  # text slots; summary slots left zero
    if not plan.sum_slots.numel():
        return out
    return out.index_copy(2, plan.sum_slots, summaries_over_chunks(q, k, v, plan, scale))


def summaries_over_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: WindowPieces, scale: float) -> torch.Tensor:
    """Each summary slot's attention over its own C + S keys (`plan.sum_keys`, `plan.sum_mask`), [B, Hq, n, D]:

        o = softmax(q . k_w * scale, over the visible w) v_w      (softmax in float32 or wider; grouped heads read their KV head)

    A few keys per query: two small products and a softmax, with no fused-attention call (whose plans would
    be built for every new count of summaries) and no K/V copied per query head."""
    b, hq, _, d = q.shape
    hkv = k.shape[1]
    n = plan.sum_slots.numel()
    qs = q[:, :, plan.sum_slots].reshape(b, hkv, hq // hkv, n, d)
    keys, vals = k[:, :, plan.sum_keys], v[:, :, plan.sum_keys]  # [B, Hkv, n, C + S, D]
    scores = torch.einsum("bkgnd,bknwd->bkgnw", qs, keys).to(torch.promote_types(q.dtype, torch.float32)) * scale
    probs = scores.masked_fill(~plan.sum_mask, float("-inf")).softmax(-1).to(v.dtype)
    return torch.einsum("bkgnw,bknwd->bkgnd", probs, vals).reshape(b, hq, n, d)


def shared_mask(layout: SharedLayout, window: int, impl: str, summaries_visible: bool = True, block: bool | None = None):
    """What `shared_ksa_attention` needs for one window: a dense mask for impl "reference"; for a window
    that covers the row, its `WindowPieces` where they pay off (ksa.pieces.pays_off: on CUDA with cuDNN's
    length-bucketed plans and responses of 1,024 tokens or more on average); a BlockMask otherwise (the
    Triton kernel reads only the plain layout; shared rows run through FlexAttention). `block` overrides;
    on the CPU the default is dense (FlexAttention has no CPU backward)."""
    responses = [r for _, rs in layout.units for r in rs]
    if impl != "reference" and block is None and pays_off(layout.doc.device, responses):
        plan = window_pieces(layout, window)
        if plan is not None:
            return plan
    if block is None:
        block = impl != "reference" and layout.doc.device.type != "cpu"
    if not block:
        return shared_dense_mask(layout, window, summaries_visible)
    return shared_block_mask(layout, window, summaries_visible)


def shared_ksa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, scale: float | None = None,
                         call=None) -> torch.Tensor:  # fmt: skip
    """Attention of a shared-prompt row: q [B, Hq, L, D], k/v [B, Hkv, L, D] under `shared_mask(...)`.

    `call(fn, *args)`, if given, runs the FlexAttention of a BlockMask row (between a compiled layer's
    graphs): a trainer passes one that keeps its output through a checkpoint's recompute (golong's
    kept_through_recompute), since a selective checkpoint policy cannot see that compiled kernel."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if isinstance(mask, WindowPieces):
        return window_pieces_attention(q, k, v, mask, scale)
    if isinstance(mask, torch.Tensor):
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if call is not None:
        return call(flex_between_graphs, q, k, v, mask, scale, q.shape[1] != k.shape[1])
    return run_flex(q, k, v, mask, scale, between_graphs=True)  # rows of bucket lengths (ksa_layout_padding)
