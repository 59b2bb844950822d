"""Preallocated KSA decode storage for a fixed pool of rows: fixed shapes, so a decode step can be
captured as a CUDA graph.

Per layer (window W chunks of C tokens, S summaries per chunk, sequences of at most `max_len` text
tokens; the same split and the same slot numbering as ksa/cache.py):

- full layer (W*C >= max_len): text K/V [rows, Hkv, max_len, D], position p in slot p. No summary is
  ever visible to a text query there, so the step's own summaries are attended and dropped.
- ring layer: text K/V [rows, Hkv, R, D], R = (W+1)*C, position p in slot p mod R; summary K/V
  [rows, Hkv, ceil(max_len/C)*S, D], summary j of chunk c in slot c*S + j.

A decode step feeds, per row, one text token at position `pos` and optionally (n = 1 + S columns)
the S summary slots of chunk pos // C. Summary columns are fed for every row whenever any row
completes a chunk; a row that does not writes provisional summary K/V into the slot of its current
chunk, which no text query can see yet (text sees summaries of chunks more than W behind) and which
the row overwrites when it does complete the chunk. So no per-row branch is needed.

Which ring slots a query may read follows from arithmetic alone: slot s holds the latest position
p' = pos - ((pos - s) mod R) <= pos, valid for a text query when p' >= max(0, (pos//C - W) * C) and
for a summary query when p' >= (pos//C) * C (its own chunk). The masks (ksa/mask.py, on text
positions): text query -> text of chunks within W, summaries of chunks more than W behind (when
visible); summary j -> text of its own chunk and summaries j' <= j of its own chunk. So a row is
filled by writing only the slots its sequence holds; what an earlier sequence left elsewhere is
never read.

Prompts are prefilled several per forward (`PackedPrefill`: the columns and attention of such a
forward) and stored with `load_prompts`.
"""

from __future__ import annotations

import torch

from ksa.attention import inverse_order, ksa_attention
from ksa.layout import expand_positions, expanded_length

NEG_INF = float("-inf")


class PackedPrefill:
    """Several prompts prefilled in one forward: their columns, and attention per prompt.

    Columns (N = sum of P + all summary slots): every prompt's text end to end (position p of prompt
    i at column sum(P[:i]) + p), then every prompt's summary slots end to end (summary j of chunk c
    at the prompt's offset + c*S + j), so a layer loop that treats its last `n_sum` columns as
    summary slots (summary norm, q/k/v projections) runs all of them as in a decode step.
    `positions` [N]: RoPE position of each column (text p at p, summaries as in ksa/layout.py).

    `attend` gathers q/k/v into the prompts' interleaved layouts laid end to end (`layout` [L]: the
    column of each slot), runs each prompt's slice through `ksa_attention` with the layer's window
    and the model's kernel (the call a forward over that prompt alone makes, within-window fast path
    included), and gathers the outputs back: each prompt gets exactly what prefilling it alone gives.
    Why not one call over the pack (ksa/shared.py's rows with no responses, or ksa_attention's
    seq_lens packing): the reference kernel's mask and scores would span the pack, (sum P)^2 rather
    than sum P^2, and a full layer would lose the causal SDPA path, which holds for one sequence only.
    Why not a right-padded batch: every row pays for padding up to the longest prompt."""

    def __init__(self, lengths: list[int], chunk: int, summaries: int, device=None):
        self.lengths, self.chunk, self.summaries = list(lengths), chunk, summaries
        n_text = sum(lengths)
        text_pos, sum_pos, layout = [], [], []
        text_col, sum_col = 0, n_text
        for length in lengths:
            pos, is_sum = expand_positions(length, chunk, summaries)
            n_sum = int(is_sum.sum())
            cols = torch.empty(pos.numel(), dtype=torch.long)
            cols[~is_sum] = torch.arange(text_col, text_col + length)
            cols[is_sum] = torch.arange(sum_col, sum_col + n_sum)
            text_pos.append(pos[~is_sum])
            sum_pos.append(pos[is_sum])
            layout.append(cols)
            text_col, sum_col = text_col + length, sum_col + n_sum
        self.n_sum = sum_col - n_text
        self.positions = torch.cat(text_pos + sum_pos).to(device)
        self.layout = torch.cat(layout).to(device)
        self.back = inverse_order(self.layout)
        self.spans = [expanded_length(t, chunk, summaries) for t in lengths]
        self.last_text = torch.tensor(lengths, device=device).cumsum(0) - 1  # column of each prompt's last token

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int, impl: str, scale: float,
               summaries_visible: bool = True) -> torch.Tensor:
        """q [1, Hq, N, D], k/v [1, Hkv, N, D] in column order, after RoPE -> [1, Hq, N, D]."""
        parts = (x.index_select(2, self.layout).split(self.spans, 2) for x in (q, k, v))
        out = [ksa_attention(qp, kp, vp, chunk=self.chunk, summaries=self.summaries, window=window, impl=impl,
                             scale=scale, summaries_visible=summaries_visible)
               for qp, kp, vp in zip(*parts, strict=True)]
        return torch.cat(out, 2).index_select(2, self.back)


def prompt_start(full: bool, plen: int, chunk: int, window: int) -> int:
    """The first prompt position any later query can see: 0 in a full layer, else the start of chunk
    P//C - W (what `ksa.cache.KSACacheLayer.prefill` keeps of a ring layer's text)."""
    return 0 if full else max(0, (plen // chunk - window) * chunk)


def store_prompts(stores: tuple, rows: list[int], lengths: list[int], k: torch.Tensor, v: torch.Tensor, *, full: bool,
                  window: int, chunk: int, summaries: int, text_slot) -> None:
    """Write prompts prefilled in one forward (PackedPrefill's column order) into stores = (text K, text
    V, summary K, summary V; the summary pair None in a full layer), prompt i into row rows[i]: its
    text of positions p >= prompt_start at slot text_slot(p, prompt_start) and the summaries of its
    P//C whole chunks at slot c*S + j."""
    tk, tv, sk, sv = stores
    dev = k.device
    t_rows, t_slots, t_cols, s_rows, s_slots, s_cols = [], [], [], [], [], []
    text_col, sum_col = 0, sum(lengths)
    for row, P in zip(rows, lengths, strict=True):
        t0 = prompt_start(full, P, chunk, window)
        p = torch.arange(t0, P, device=dev)
        t_rows.append(torch.full_like(p, row))
        t_slots.append(text_slot(p, t0))
        t_cols.append(text_col + p)
        n_sum = (P // chunk) * summaries
        if sk is not None and n_sum:
            m = torch.arange(n_sum, device=dev)
            s_rows.append(torch.full_like(m, row))
            s_slots.append(m)
            s_cols.append(sum_col + m)
        text_col, sum_col = text_col + P, sum_col + n_sum
    if sum_col != k.shape[1]:
        raise ValueError(f"packed prefill K/V has {k.shape[1]} columns, lengths {lengths} need {sum_col}")
    r, s, c = (torch.cat(x) for x in (t_rows, t_slots, t_cols))
    tk[r, :, s] = k[:, c].transpose(0, 1).to(tk.dtype)
    tv[r, :, s] = v[:, c].transpose(0, 1).to(tv.dtype)
    if s_rows:
        r, s, c = (torch.cat(x) for x in (s_rows, s_slots, s_cols))
        sk[r, :, s] = k[:, c].transpose(0, 1).to(sk.dtype)
        sv[r, :, s] = v[:, c].transpose(0, 1).to(sv.dtype)


class StaticKSALayer:
    """Decode K/V of one KSA layer for `rows` sequences (see the module docstring)."""

    def __init__(self, rows: int, kv_heads: int, head_dim: int, max_len: int, *, window: int, chunk: int,
                 summaries: int, visible: bool = True, dtype=torch.bfloat16, device="cpu"):
        self.window, self.chunk, self.summaries, self.visible = window, chunk, summaries, visible
        self.full = window * chunk >= max_len
        self.text_slots = max_len if self.full else (window + 1) * chunk
        self.sum_slots = 0 if self.full else -(-max_len // chunk) * summaries
        text = (rows, kv_heads, self.text_slots, head_dim)
        self.k = torch.zeros(text, dtype=dtype, device=device)
        self.v = torch.zeros(text, dtype=dtype, device=device)
        summ = (rows, kv_heads, self.sum_slots, head_dim)
        self.sk = torch.zeros(summ, dtype=dtype, device=device) if self.sum_slots else None
        self.sv = torch.zeros(summ, dtype=dtype, device=device) if self.sum_slots else None

    def kind(self) -> tuple:
        """Layers of equal kind share one set of decode masks per step."""
        return (self.full, self.window, self.text_slots, self.sum_slots, self.visible)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.sk, self.sv) if t is not None)

    # --- filling and moving rows -----------------------------------------------------------------
    def load_prompts(self, rows: list[int], lengths: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the K/V of several prompts prefilled in one forward, prompt i into row rows[i].

        k, v [Hkv, N, D] after RoPE, in `PackedPrefill`'s column order: the prompts' text end to end
        (position p of prompt i at column sum(lengths[:i]) + p), then their summaries end to end (summary
        j of chunk c of prompt i at column sum(lengths) + sum(S * (lengths[:i] // C)) + c*S + j). Kept is
        what `ksa.cache.KSACacheLayer.prefill` keeps: a full layer every position p (slot p); a ring layer
        the positions of chunks >= P//C - W (slot p mod R), the only text a later query can reach, and
        every summary of the P//C full chunks (slot c*S + j). Other slots of the row are left as they
        are: the decode masks never read them (see the module docstring)."""
        store_prompts((self.k, self.v, self.sk, self.sv), rows, lengths, k, v, full=self.full, window=self.window,
                      chunk=self.chunk, summaries=self.summaries,
                      text_slot=lambda p, t0: p if self.full else p % self.text_slots)

    def copy_row(self, src: int, dst: int, length: int) -> None:
        """Row `dst` := row `src` for a sequence holding `length` text tokens."""
        t = self.text_slots if not self.full else length
        self.k[dst, :, :t] = self.k[src, :, :t]
        self.v[dst, :, :t] = self.v[src, :, :t]
        if self.sk is not None:
            m = min(self.sum_slots, -(-length // self.chunk) * self.summaries)
            self.sk[dst, :, :m] = self.sk[src, :, :m]
            self.sv[dst, :, :m] = self.sv[src, :, :m]

    def save_rows(self, rows: int, pos: int) -> list[torch.Tensor]:
        """What a decode of rows 0..rows-1 at text position `pos` may overwrite (to restore after a
        warm-up run that is not a real step)."""
        out = [self.k[:rows, :, pos % self.text_slots].clone(), self.v[:rows, :, pos % self.text_slots].clone()]
        if self.sk is not None:
            s0 = (pos // self.chunk) * self.summaries
            out += [self.sk[:rows, :, s0 : s0 + self.summaries].clone(), self.sv[:rows, :, s0 : s0 + self.summaries].clone()]
        return out

    def restore_rows(self, saved: list[torch.Tensor], pos: int) -> None:
        rows = saved[0].shape[0]
        self.k[:rows, :, pos % self.text_slots] = saved[0]
        self.v[:rows, :, pos % self.text_slots] = saved[1]
        if self.sk is not None:
            s0 = (pos // self.chunk) * self.summaries
            self.sk[:rows, :, s0 : s0 + self.summaries] = saved[2]
            self.sv[:rows, :, s0 : s0 + self.summaries] = saved[3]

    # --- one decode step -------------------------------------------------------------------------
    def spans(self, span: int) -> tuple[int, int]:
        """(text slots, summary slots) a step attends when every live position is < span."""
        if self.full:
            return span, 0
        return self.text_slots, min(self.sum_slots, ((span - 1) // self.chunk + 1) * self.summaries)

    def biases(self, pos: torch.Tensor, n: int, span: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive masks (0 / -inf) [B, n, text span] and [B, n, summary span or S], for query columns
        (text, summary 0..n-2). The second attends the stored summaries (ring) or the step's own (full)."""
        C, S, W = self.chunk, self.summaries, self.window
        t_span, s_span = self.spans(span)
        qc = pos // C
        start = qc * C
        slot = torch.arange(t_span, device=pos.device)
        if self.full:
            held = slot[None].expand(pos.shape[0], -1)  # slot p holds position p
            text_ok = held <= pos[:, None]
        else:
            held = pos[:, None] - (pos[:, None] - slot[None]).remainder(self.text_slots)
            text_ok = held >= ((qc - W) * C).clamp(min=0)[:, None]
        own_text = (held >= start[:, None]) & (held <= pos[:, None])
        text = torch.stack([text_ok] + [own_text] * (n - 1), 1)
        if self.full:  # the step's own S summaries: summary j sees j' <= j, text sees none
            j = torch.arange(S, device=pos.device)
            rows = [torch.zeros(S, dtype=torch.bool, device=pos.device)] + [j <= i for i in range(n - 1)]
            summ = torch.stack(rows, 0)[None].expand(pos.shape[0], -1, -1)
        else:
            m = torch.arange(s_span, device=pos.device)
            ch, jj = m // S, m % S
            old = (qc[:, None] - ch[None] > W) & self.visible
            mine = ch[None] == qc[:, None]
            summ = torch.stack([old] + [mine & (jj[None] <= i) for i in range(n - 1)], 1)
        zero = torch.zeros((), dtype=torch.float32, device=pos.device)
        return (torch.where(text, zero, NEG_INF), torch.where(summ, zero, NEG_INF))

    def storage(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(text K, text V, summary K, summary V); the summary pair is None in a full layer."""
        return self.k, self.v, self.sk, self.sv

    def layout(self, span: int) -> tuple[bool, int, int, int, int, int]:
        """The integers `decode_attention` needs for a step with every live position < span:
        (full, text slots, chunk, summaries, text span, summary span)."""
        return (self.full, self.text_slots, self.chunk, self.summaries, *self.spans(span))


def write_slots(store: torch.Tensor, slots: torch.Tensor, values: torch.Tensor) -> None:
    """store[b, h, slots[b]] = values[b, h] (slots [B], values [B, Hkv, D]) or store[b, h, slots[b, j]] =
    values[b, h, j] (slots [B, J], values [B, Hkv, J, D]) for rows b < B and every KV head h, in place.

    One index_put_ on the storage tensor itself, the form full attention's decode write takes, which
    inductor compiled to one small in-place kernel on the H200. The earlier form, index_copy_ into a
    flat view of the storage, showed two storage-sized kernels per write in the compiled KSA step's
    profile on an H100 (torch 2.11; inferred from kernel names, sizes and counts, 2026-12-05)."""
    b, hkv = values.shape[0], values.shape[1]
    rows = torch.arange(b, device=slots.device)
    heads = torch.arange(hkv, device=slots.device)
    if slots.dim() == 1:
        store.index_put_((rows[:, None], heads[None], slots[:, None]), values)
    else:
        store.index_put_((rows[:, None, None], heads[None, :, None], slots[:, None, :]), values)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, storage: tuple,
                     biases: tuple[torch.Tensor, torch.Tensor], scale: float, layout: tuple,
                     kernel: str = "torch") -> torch.Tensor:
    """One decode step of a KSA layer on plain tensors (torch.compile can trace it): write the step's
    K/V into rows 0..B-1 of `storage` (StaticKSALayer.storage) and attend.

    q [B, Hq, n, D], k/v [B, Hkv, n, D] after RoPE, column 0 the text token at `pos` [B], columns 1..
    the summaries of chunk pos // C; biases from StaticKSALayer.biases, layout from .layout(span).
    Text position p goes to slot p (full layer) or p mod R (ring); summary j of chunk c to slot c*S + j
    (ring; a full layer attends the step's own summaries and keeps none). Softmax over text then
    summary slots, one score row per (query head, column). Returns [B, Hq, n, D]. kernel "triton": text
    and summary slots each through ksa/triton_decode.py's split-K kernel, merged by log-sum-exp."""
    full, text_slots, chunk, summaries, t_span, s_span = layout
    kc, vc, skc, svc = storage
    b, hq, n, d = q.shape
    hkv = k.shape[1]
    groups = hq // hkv
    slot = pos if full else pos % text_slots
    write_slots(kc, slot, k[:, :, 0])
    write_slots(vc, slot, v[:, :, 0])
    if full:
        sum_k, sum_v = k[:, :, 1:], v[:, :, 1:]
    else:
        if n > 1:
            s_idx = (pos // chunk)[:, None] * summaries + torch.arange(n - 1, device=pos.device)  # [B, S]
            write_slots(skc, s_idx, k[:, :, 1:])
            write_slots(svc, s_idx, v[:, :, 1:])
        sum_k, sum_v = skc[:b, :, :s_span], svc[:b, :, :s_span]
    qg = q.reshape(b, hkv, groups * n, d)
    kt, vt = kc[:b, :, :t_span], vc[:b, :, :t_span]
    bias_t, bias_s = biases
    if kernel == "triton":
        from ksa.triton_decode import decode_key_parts, merge_partials

        parts = [(kk, vv, bias[:, None]) for kk, vv, bias in ((kt, vt, bias_t), (sum_k, sum_v, bias_s)) if kk.shape[2]]
        return merge_partials(*decode_key_parts(qg, parts, scale, groups, n)).to(q.dtype).reshape(b, hq, n, d)

    def scores(keys, bias):
        s = torch.matmul(qg, keys.transpose(-1, -2)).float() * scale
        return (s.view(b, hkv, groups, n, -1) + bias[:, None, None]).view(b, hkv, groups * n, -1)

    parts = [scores(kt, bias_t)]
    if sum_k.shape[2]:
        parts.append(scores(sum_k, bias_s))
    probs = torch.softmax(torch.cat(parts, -1), -1).to(vt.dtype)
    out = torch.matmul(probs[..., :t_span], vt)
    if len(parts) > 1:
        out = out + torch.matmul(probs[..., t_span:], sum_v)
    return out.reshape(b, hq, n, d)
