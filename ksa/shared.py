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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from ksa.flex_attention import prefix_rule, rule_block_mask, run_flex


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

    @property
    def length(self) -> int:
        return self.doc.numel()

    @property
    def tables(self) -> tuple[torch.Tensor, ...]:
        """(doc, is_summary, chunk, pos, member): the slot descriptions the rule reads."""
        return self.doc, self.is_summary, self.chunk_of, self.pos, self.member


def shared_layout(
    units: Sequence[tuple[int, Sequence[int]]], chunk: int = 8, summaries: int = 1, device=None
) -> SharedLayout:
    """The layout of units (prompt length P >= 1, [response lengths]) packed one after another.

    The text of unit u is expected as P prompt tokens then each response's tokens, units in order
    (N = sum of P + sum of R text tokens); `text_slots` says where each of them goes."""
    units = tuple((int(p), tuple(int(r) for r in rs)) for p, rs in units)
    if chunk < 1 or not 1 <= summaries <= chunk:
        raise ValueError(f"need chunk >= 1 and 1 <= summaries <= chunk, got {chunk}, {summaries}")
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
    cat = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in cols.items()}
    i32 = partial(torch.Tensor.to, device=device, dtype=torch.int32)
    return SharedLayout(
        units, chunk, summaries, i32(cat["doc"]), i32(cat["sum"]), i32(cat["chunk"]), i32(cat["pos"]),
        i32(cat["member"]), cat["rope"].to(device), cat["text"].to(device),
    )


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
    """FlexAttention BlockMask of the shared rule (tiles evaluated slab by slab, never the L x L mask)."""
    return rule_block_mask(layout.tables, partial(shared_rule, window=window, summaries_visible=summaries_visible))


def shared_mask(layout: SharedLayout, window: int, impl: str, summaries_visible: bool = True, block: bool | None = None):
    """What `shared_ksa_attention` needs for one window: a dense mask for impl "reference", a BlockMask
    otherwise (the Triton kernel reads only the plain layout; shared rows run through FlexAttention).
    `block` overrides; on the CPU the default is dense (FlexAttention has no CPU backward)."""
    if block is None:
        block = impl != "reference" and layout.doc.device.type != "cpu"
    if not block:
        return shared_dense_mask(layout, window, summaries_visible)
    return shared_block_mask(layout, window, summaries_visible)


def shared_ksa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, scale: float | None = None) -> torch.Tensor:
    """Attention of a shared-prompt row: q [B, Hq, L, D], k/v [B, Hkv, L, D] under `shared_mask(...)`."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if isinstance(mask, torch.Tensor):
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return run_flex(q, k, v, mask, scale)
