"""KSA decode storage with a GRPO group's prompt stored once (the KSA form of shared-prefix decode).

The rows of one group sit in a block of `width` consecutive slots and decode in step (they start
together from the same prompt). Per layer (window W chunks of C tokens, S summaries per chunk,
ring length R = (W+1)*C), a block's prompt of P tokens lives in its block's prefix row, read once per
step for all the block's rows, and each row holds only its own (response) part:

                    prefix row (per block)                       own row (per slot)
  full layer   text of positions 0..P-1 (index p)           text of positions P.. (index p - P)
  ring layer   text of positions t0..P-1 (index p - t0),    text ring: position p at (p - P) mod R;
               t0 = max(0, (P//C - W) * C): the first       summaries of chunks c >= P//C at
               prompt position a response query can see;    (c - P//C)*S + j
               summaries of chunks c < P//C at c*S + j

A prompt's last chunk is partial when C does not divide P; its summary is computed when a response
completes that chunk, so it is the row's own. A full layer attends a step's own summaries and keeps
none (no text query there sees a summary), as in ksa/static_cache.py.

Which keys a query column sees is the KSA mask (ksa/mask.py) on text positions, with qc = pos // C:
  text column      text of chunks >= qc - W (every position <= pos in a full layer), summaries of
                   chunks < qc - W (when summaries are visible; ring layers)
  summary col. i   text of its own chunk (positions qc*C..pos) and summaries j <= i of its own chunk
Scores of the prefix parts are computed with the block's rows' queries stacked ([blocks, Hkv,
width*G*n, D] against the block's keys), so a step reads each prefix once; then one softmax over
prefix text, prefix summaries, own text and own summaries (float32), and the probabilities go back
to the same split for the weighted sum of values.
"""

from __future__ import annotations

import torch

from ksa.static_cache import store_prompts, write_slots

NEG_INF = float("-inf")


class SharedKSALayer:
    """Decode K/V of one KSA layer: `blocks` prefix rows of prompts up to `prompt_cap` tokens, `rows`
    own rows of responses up to `own_cap` tokens (see the module docstring)."""

    def __init__(self, blocks: int, rows: int, kv_heads: int, head_dim: int, prompt_cap: int, own_cap: int, *,
                 window: int, chunk: int, summaries: int, visible: bool = True, dtype=torch.bfloat16, device="cpu"):
        self.window, self.chunk, self.summaries, self.visible = window, chunk, summaries, visible
        self.full = window * chunk >= prompt_cap + own_cap
        self.ring = (window + 1) * chunk
        sizes = slot_counts(self.full, self.ring, chunk, summaries, prompt_cap, own_cap)

        def store(n: int, slots: int) -> torch.Tensor | None:
            return torch.zeros((n, kv_heads, slots, head_dim), dtype=dtype, device=device) if slots else None

        self.pk, self.pv = store(blocks, sizes[0]), store(blocks, sizes[0])  # prefix text
        self.psk, self.psv = store(blocks, sizes[1]), store(blocks, sizes[1])  # prefix summaries (ring)
        self.k, self.v = store(rows, sizes[2]), store(rows, sizes[2])  # own text
        self.sk, self.sv = store(rows, sizes[3]), store(rows, sizes[3])  # own summaries (ring)

    def kind(self) -> tuple:
        """Layers of equal kind share one set of decode masks per step."""
        return (self.full, self.window, self.visible, *(0 if t is None else t.shape[2] for t in self.storage()[::2]))

    def storage(self) -> tuple:
        """(prefix text K, V, prefix summary K, V, own text K, V, own summary K, V); None where a kind has none."""
        return self.pk, self.pv, self.psk, self.psv, self.k, self.v, self.sk, self.sv

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.storage() if t is not None)

    # --- filling and moving rows -----------------------------------------------------------------
    def load_prompts(self, homes: list[int], lengths: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Store prompts prefilled in one forward (ksa.static_cache.PackedPrefill's column order: all
        text end to end, then all summaries end to end), prompt i into prefix row homes[i]: the text a
        response can see (positions >= t0) and the summaries of its complete chunks."""
        store_prompts((self.pk, self.pv, self.psk, self.psv), homes, lengths, k, v, full=self.full,
                      window=self.window, chunk=self.chunk, summaries=self.summaries, text_slot=lambda p, t0: p - t0)

    def copy_prefix(self, src: int, dst: int) -> None:
        """Prefix row `dst` := prefix row `src` (a prompt moving to another block)."""
        for t in (self.pk, self.pv, self.psk, self.psv):
            if t is not None:
                t[dst] = t[src]

    def copy_row(self, src: int, dst: int, length: int = 0) -> None:
        """Own row `dst` := own row `src` (a response moving to another slot; `length` unused: rows are short)."""
        for t in (self.k, self.v, self.sk, self.sv):
            if t is not None:
                t[dst] = t[src]

    def save_rows(self, rows: int, pos: int, plen: int = 0) -> list[torch.Tensor]:
        """What a decode of own rows 0..rows-1 at position `pos` after a prompt of `plen` tokens may
        overwrite (restored after a warm-up run that is not a real step)."""
        t, s0 = self._own_slots(pos, plen)
        out = [self.k[:rows, :, t].clone(), self.v[:rows, :, t].clone()]
        if self.sk is not None:
            out += [x[:rows, :, s0 : s0 + self.summaries].clone() for x in (self.sk, self.sv)]
        return out

    def restore_rows(self, saved: list[torch.Tensor], pos: int, plen: int = 0) -> None:
        rows = saved[0].shape[0]
        t, s0 = self._own_slots(pos, plen)
        self.k[:rows, :, t], self.v[:rows, :, t] = saved[0], saved[1]
        if self.sk is not None:
            self.sk[:rows, :, s0 : s0 + self.summaries] = saved[2]
            self.sv[:rows, :, s0 : s0 + self.summaries] = saved[3]

    def _own_slots(self, pos: int, plen: int) -> tuple[int, int]:
        own = pos - plen
        return (own if self.full else own % self.ring), (pos // self.chunk - plen // self.chunk) * self.summaries

    # --- one decode step -------------------------------------------------------------------------
    def layout(self, width: int, prefix_span: int, own_span: int) -> tuple:
        """Integers of a step (prompts < prefix_span tokens, own positions < own_span): (full, width,
        ring, chunk, summaries, spans of prefix text, prefix summaries, own text, own summaries)."""
        C, S = self.chunk, self.summaries
        cap = [0 if t is None else t.shape[2] for t in self.storage()[::2]]
        if self.full:
            spans = (min(cap[0], prefix_span), 0, min(cap[2], own_span), 0)
        else:
            spans = (cap[0], min(cap[1], (prefix_span // C) * S), min(cap[2], own_span),
                     min(cap[3], ((own_span - 1) // C + 2) * S))
        return (self.full, width, self.ring, C, S, *spans)

    def biases(self, pos: torch.Tensor, plen: torch.Tensor, n: int, layout: tuple) -> tuple[torch.Tensor, ...]:
        """Additive masks (0 / -inf), one per key part, each [B, n, span]: prefix text, prefix
        summaries, own text, own summaries (a full layer: the step's own S summaries), for query
        columns (text, summary 0..n-2); pos, plen [B] (the row's position and its prompt's length)."""
        full, _, R, C, S, pt, ps, ot, os_ = layout
        W = self.window
        qc = pos // C
        first = qc * C  # the query's own chunk starts here
        seen = ((qc - W) * C).clamp(min=0) if not full else torch.zeros_like(pos)  # earliest visible text
        dev = pos.device

        def cols(text: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:  # [B, span] x2 -> [B, n, span]
            return torch.stack([text] + [summary] * (n - 1), 1)

        i = torch.arange(pt, device=dev)[None]
        p = prompt_start_t(full, plen, C, W)[:, None] + i  # prefix text position
        valid = p < plen[:, None]
        parts = [cols(valid & (p >= seen[:, None]), valid & (p >= first[:, None]))]
        m = torch.arange(ps, device=dev)[None]
        old = (qc[:, None] - m // S > W) & (m < (plen // C * S)[:, None]) & self.visible
        parts.append(cols(old, torch.zeros_like(old)))
        s = torch.arange(ot, device=dev)[None]
        own = pos[:, None] - plen[:, None]
        held = plen[:, None] + (s if full else own - (own - s).remainder(R))  # position in own slot s
        valid = (held >= plen[:, None]) & (held <= pos[:, None])
        parts.append(cols(valid & (held >= seen[:, None]), valid & (held >= first[:, None])))
        if full:  # the step's own summaries: summary j sees j' <= j, text sees none
            j = torch.arange(S, device=dev)
            summ = torch.stack([torch.zeros(S, dtype=torch.bool, device=dev)] + [j <= k for k in range(n - 1)], 0)
            parts.append(summ[None].expand(pos.shape[0], -1, -1))
        else:
            m = torch.arange(os_, device=dev)[None]
            ch, jj = (plen // C)[:, None] + m // S, m % S
            text = (qc[:, None] - ch > W) & self.visible
            mine = ch == qc[:, None]
            parts.append(torch.stack([text] + [mine & (jj <= k) for k in range(n - 1)], 1))
        zero = torch.zeros((), dtype=torch.float32, device=dev)
        return tuple(torch.where(x, zero, NEG_INF) for x in parts)


def slot_counts(full: bool, ring: int, chunk: int, summaries: int, prompt_cap: int, own_cap: int) -> tuple[int, ...]:
    """Slots of (prefix text, prefix summaries, own text, own summaries) for one layer kind."""
    if full:
        return prompt_cap, 0, own_cap, 0
    return (min(prompt_cap, ring), (prompt_cap // chunk) * summaries, min(own_cap, ring),
            (own_cap // chunk + 2) * summaries)


def prompt_start_t(full: bool, plen: torch.Tensor, chunk: int, window: int) -> torch.Tensor:
    """prompt_start for a tensor of prompt lengths."""
    return torch.zeros_like(plen) if full else ((plen // chunk - window) * chunk).clamp(min=0)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, plen: torch.Tensor,
                     storage: tuple, biases: tuple, scale: float, layout: tuple, kernel: str = "torch") -> torch.Tensor:
    """One decode step of a KSA layer on the shared layout, on plain tensors (torch.compile can trace
    it): write the step's own K/V into own rows 0..B-1 and attend (module docstring).

    q [B, Hq, n, D], k/v [B, Hkv, n, D] after RoPE (column 0 the text token at `pos`, columns 1.. the
    summaries of chunk pos // C), plen [B] the rows' prompt lengths, B = blocks * width; storage from
    SharedKSALayer.storage, biases from .biases, layout from .layout. Returns [B, Hq, n, D].
    kernel "triton": each key part through ksa/triton_decode.py's split-K kernel (the prefix parts
    with the block's queries stacked, as here), the parts' splits merged by log-sum-exp; "torch":
    one softmax over the concatenated scores."""
    full, width, R, C, S, pt, ps, ot, os_ = layout
    pk, pv, psk, psv, kc, vc, skc, svc = storage
    b, hq, n, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    blocks = b // width
    own = pos - plen
    write_slots(kc, own if full else own % R, k[:, :, 0])
    write_slots(vc, own if full else own % R, v[:, :, 0])
    if full:
        own_sk, own_sv = k[:, :, 1:], v[:, :, 1:]
    else:
        if n > 1:
            s_idx = (pos // C - plen // C)[:, None] * S + torch.arange(n - 1, device=pos.device)  # [B, S]
            write_slots(skc, s_idx, k[:, :, 1:])
            write_slots(svc, s_idx, v[:, :, 1:])
        own_sk, own_sv = skc[:b, :, :os_], svc[:b, :, :os_]
    qg = q.reshape(b, hkv, g * n, d)
    stacked = q.reshape(blocks, width, hkv, g * n, d).transpose(1, 2).reshape(blocks, hkv, width * g * n, d)

    def shared_scores(keys: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # -> [B, Hkv, G*n, span]
        s = torch.matmul(stacked, keys.transpose(-1, -2)).float() * scale
        s = s.view(blocks, hkv, width, g * n, -1).transpose(1, 2).reshape(b, hkv, g, n, -1)
        return (s + bias[:, None, None]).view(b, hkv, g * n, -1)

    def own_scores(keys: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        s = torch.matmul(qg, keys.transpose(-1, -2)).float() * scale
        return (s.view(b, hkv, g, n, -1) + bias[:, None, None]).view(b, hkv, g * n, -1)

    keys = [(pk[:blocks, :, :pt], pv[:blocks, :, :pt], True), (kc[:b, :, :ot], vc[:b, :, :ot], False),
            (own_sk, own_sv, False)]
    masks = [biases[0], biases[2], biases[3]]
    if ps:
        keys.insert(1, (psk[:blocks, :, :ps], psv[:blocks, :, :ps], True))
        masks.insert(1, biases[1])
    keys, masks = zip(*[(kv, m) for kv, m in zip(keys, masks, strict=True) if kv[0].shape[2]], strict=True)
    if kernel == "triton":  # one launch for the prompt's parts (queries stacked), one for the row's own
        from ksa.triton_decode import decode_key_parts, merge_key_parts, stacked_to_rows

        parts = list(zip(keys, masks, strict=True))
        prompt = [(kk, vv, m.view(blocks, width, n, -1)) for (kk, vv, shared), m in parts if shared]
        rows = [(kk, vv, m[:, None]) for (kk, vv, shared), m in parts if not shared]
        partials = [stacked_to_rows(*decode_key_parts(stacked, prompt, scale, g, n), width)] if prompt else []
        if rows:
            partials.append(decode_key_parts(qg, rows, scale, g, n))
        return merge_key_parts(partials).to(q.dtype).reshape(b, hq, n, d)
    scores = [shared_scores(kk, m) if shared else own_scores(kk, m) for (kk, _, shared), m in zip(keys, masks, strict=True)]
    probs = torch.softmax(torch.cat(scores, -1), -1).to(vc.dtype).split([s.shape[-1] for s in scores], -1)
    out = None
    for (_, vv, shared), p in zip(keys, probs, strict=True):
        if shared:
            p = p.reshape(blocks, width, hkv, g * n, -1).transpose(1, 2).reshape(blocks, hkv, width * g * n, -1)
            o = torch.matmul(p, vv).view(blocks, hkv, width, g * n, d).transpose(1, 2).reshape(b, hkv, g * n, d)
        else:
            o = torch.matmul(p, vv)
        out = o if out is None else out + o
    return out.reshape(b, hq, n, d)
