"""A batched KV cache for KSA decoding, behind the transformers `Cache` API.

Per layer with window W (chunks), chunk C, S summaries per chunk:

- *ring* layers (W*C shorter than the longest sequence the cache may see) keep the text K/V of the
  current chunk and the W chunks before it in a ring of R = (W+1)*C slots — text position p lives
  in slot p mod R, so the current chunk overwrites the chunk that just left the window (eviction at
  chunk completion) — plus an append-only list of summary K/V (summary j of chunk c at index c*S+j).
- *full* layers (W*C >= max_length) keep all text K/V and no summary K/V: no summary ever leaves
  their window. A summary query there still needs its own K/V, which is attended once and dropped.

Every layer applies its own window's mask (ksa/mask.py), written on text positions:
  text query at p (chunk q = p // C):  text key p' with p' <= p and q - p'//C <= W;
                                       summary of chunk c' with q - c' > W (when visible).
  summary j of chunk q:                text keys of chunk q; summaries j' <= j of chunk q.

Rows are independent: each keeps its own text length, so chunk boundaries differ per row (left-
padded prompts). A decode step feeds one text token per row plus, when any row completes a chunk
with that token, S summary slots for every row; the slots of rows that complete nothing are masked
out of the cache (never written) and their outputs ignored. RoPE is applied before caching, so slot
order does not matter. K/V are stored as [B, N, H, D].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, CacheLayerMixin

from ksa.layout import text_index


class KSACacheError(RuntimeError):
    """The cache was used in a way it does not support (cropping, too long for a full layer)."""


def _grow(t: torch.Tensor | None, cap: int, fill, like: torch.Tensor, tail: tuple[int, ...]) -> torch.Tensor:
    """Return a [B, cap, *tail] tensor holding `t` in its first rows (new rows = fill)."""
    new = torch.full((like.shape[0], cap, *tail), fill, dtype=like.dtype, device=like.device)
    if t is not None:
        new[:, : t.shape[1]] = t
    return new


class KSACacheLayer(CacheLayerMixin):
    """Text ring (or full text store) + summary list of one decoder layer."""

    is_compileable = False
    supports_early_init = False

    def __init__(
        self, window: int, chunk: int, summaries: int, full: bool, summaries_visible: bool = True,
        max_length: int | None = None,
    ):
        super().__init__()
        self.max_length = max_length  # growth never allocates beyond what max_length text needs
        self.window, self.chunk, self.summaries = window, chunk, summaries
        self.full, self.visible = full, summaries_visible
        self.ring = None if full else (window + 1) * chunk
        self.text_pos: torch.Tensor | None = None  # [B, N] text position held by each slot, -1 = empty
        self.sum_keys = self.sum_values = None  # [B, M, H, D]
        self.sum_valid: torch.Tensor | None = None  # [B, M]

    # --- storage -------------------------------------------------------------------------------
    def _ensure_text(self, need: int, like: torch.Tensor) -> None:
        if self.ring is not None:
            need = min(need, self.ring)
        cap = 0 if self.keys is None else self.keys.shape[1]
        if need <= cap:
            return
        new_cap = max(need, 2 * cap)
        if self.ring is not None:
            new_cap = min(new_cap, self.ring)
        if self.max_length is not None:
            new_cap = max(need, min(new_cap, self.max_length))
        tail = like.shape[2:]
        self.keys = _grow(self.keys, new_cap, 0, like, tail)
        self.values = _grow(self.values, new_cap, 0, like, tail)
        self.text_pos = _grow(self.text_pos, new_cap, -1, like.new_empty(like.shape[0], 0, dtype=torch.long), ())
        self.is_initialized = True

    def _ensure_sum(self, need: int, like: torch.Tensor) -> None:
        cap = 0 if self.sum_keys is None else self.sum_keys.shape[1]
        if need <= cap:
            return
        new_cap = max(need, 2 * cap)
        if self.max_length is not None:
            new_cap = max(need, min(new_cap, (self.max_length // self.chunk) * self.summaries))
        tail = like.shape[2:]
        self.sum_keys = _grow(self.sum_keys, new_cap, 0, like, tail)
        self.sum_values = _grow(self.sum_values, new_cap, 0, like, tail)
        self.sum_valid = _grow(self.sum_valid, new_cap, False, like.new_empty(like.shape[0], 0, dtype=torch.bool), ())

    def _slot(self, pos: torch.Tensor) -> torch.Tensor:
        return pos if self.ring is None else pos % self.ring

    def prefill(self, key: torch.Tensor, value: torch.Tensor, lengths: torch.Tensor, text_len: int) -> None:
        """Store a prefill's K/V: key/value [B, Hkv, L, D] on the expanded layout of `text_len` text
        tokens per row (rows right-padded), row b holding lengths[b] real tokens."""
        C, S, W = self.chunk, self.summaries, self.window
        k, v = key.transpose(1, 2), value.transpose(1, 2)  # [B, L, H, D]
        ti = text_index(text_len, C, S).to(k.device)
        p = torch.arange(text_len, device=k.device)
        keep = p[None] < lengths[:, None]
        if self.ring is not None:  # only the current chunk and the W before it stay reachable
            keep &= (p[None] // C) >= (lengths[:, None] // C - W)
        self._ensure_text(text_len, k)
        b, pp = keep.nonzero(as_tuple=True)
        slot = self._slot(pp)
        self.keys[b, slot] = k[b, ti[pp]]
        self.values[b, slot] = v[b, ti[pp]]
        self.text_pos[b, slot] = pp
        if self.ring is not None and text_len >= C:
            n_sum = (text_len // C) * S
            sidx = torch.arange(n_sum, device=k.device)
            exp_idx = (sidx // S) * (C + S) + C + sidx % S
            keep_s = (sidx // S)[None] < (lengths // C)[:, None]
            self._ensure_sum(n_sum, k)
            b, ss = keep_s.nonzero(as_tuple=True)
            self.sum_keys[b, ss] = k[b, exp_idx[ss]]
            self.sum_values[b, ss] = v[b, exp_idx[ss]]
            self.sum_valid[b, ss] = True

    # --- one decode step -----------------------------------------------------------------------
    def step(
        self,
        q: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        pos: torch.Tensor,
        needs_sum: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """Attend one decode step. q [B, Hq, n, D], key/value [B, Hkv, n, D]; slot 0 is the text token
        at position pos[b], slots 1..S (n = 1 + S) the summaries of chunk pos//C, real only where
        needs_sum[b]. Writes the step's K/V, returns [B, Hq, n, D]."""
        C, S, W = self.chunk, self.summaries, self.window
        n = q.shape[2]
        k, v = key.transpose(1, 2), value.transpose(1, 2)  # [B, n, H, D]
        rows = torch.arange(k.shape[0], device=k.device)
        self._ensure_text(int(pos.max()) + 1, k)
        slot = self._slot(pos)
        self.keys[rows, slot] = k[:, 0]
        self.values[rows, slot] = v[:, 0]
        self.text_pos[rows, slot] = pos
        qc = pos // C
        keys, values = [self.keys], [self.values]

        tpos = self.text_pos
        has = tpos >= 0
        text_rows = [has & (tpos <= pos[:, None]) & (qc[:, None] - tpos.div(C, rounding_mode="floor") <= W)]
        own = has & (tpos.div(C, rounding_mode="floor") == qc[:, None]) & (tpos <= pos[:, None])
        sum_rows = [own] * (n - 1)

        j_q = torch.arange(n - 1, device=k.device)
        if self.ring is not None:
            if n > 1:
                sel = needs_sum.nonzero(as_tuple=True)[0]
                sidx = qc[:, None] * S + torch.arange(S, device=k.device)  # [B, S]
                self._ensure_sum(int(sidx.max()) + 1, k)
                self.sum_keys[sel[:, None], sidx[sel]] = k[sel, 1:]
                self.sum_values[sel[:, None], sidx[sel]] = v[sel, 1:]
                self.sum_valid[sel[:, None], sidx[sel]] = True
            if self.sum_keys is not None:
                m = torch.arange(self.sum_keys.shape[1], device=k.device)
                ch, jj = m // S, m % S
                old = self.sum_valid & (qc[:, None] - ch[None] > W)
                text_rows.append(old if self.visible else torch.zeros_like(old))
                mine = self.sum_valid & (ch[None] == qc[:, None])  # [B, M]
                sum_rows = [torch.cat([sum_rows[j], mine & (jj[None] <= j)], 1) for j in range(n - 1)]
                keys.append(self.sum_keys)
                values.append(self.sum_values)
        elif n > 1:  # full layer: the step's own summaries are attended now and never stored
            text_rows.append(needs_sum.new_zeros(k.shape[0], n - 1))
            tri = (j_q[None] <= j_q[:, None])  # [S, S]: summary j sees summaries j' <= j
            sum_rows = [torch.cat([sum_rows[j], tri[j][None].expand(k.shape[0], -1)], 1) for j in range(n - 1)]
            keys.append(k[:, 1:])
            values.append(v[:, 1:])

        text_mask = torch.cat(text_rows, 1)
        mask = torch.stack([text_mask, *sum_rows], 1)  # [B, n, Nk]
        K = torch.cat(keys, 1).transpose(1, 2)
        V = torch.cat(values, 1).transpose(1, 2)
        return F.scaled_dot_product_attention(q, K, V, attn_mask=mask[:, None], scale=scale, enable_gqa=True)

    # --- transformers CacheLayerMixin ------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        raise KSACacheError("KSACache is driven by the KSA model's attention (prefill/step), not update()")

    def get_seq_length(self) -> int:
        return 0 if self.text_pos is None else int(self.text_pos.max()) + 1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1 if self.ring is None else self.ring

    def _map_rows(self, fn) -> None:
        for name in ("keys", "values", "text_pos", "sum_keys", "sum_values", "sum_valid"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, fn(t))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_rows(lambda t: t.repeat_interleave(repeats, 0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_rows(lambda t: t.index_select(0, indices.to(t.device)))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        raise KSACacheError("KSACache cannot be cropped (evicted ring slots cannot come back)")

    def nbytes(self) -> int:
        """Bytes held by this layer's K/V tensors (allocated, not just filled)."""
        tensors = [self.keys, self.values, self.sum_keys, self.sum_values]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class KSACache(Cache):
    """Batched KSA decode cache (see the module docstring). Build it from a KSA model config:

        cache = KSACache(model.config)              # or let model.generate() create one
        cache = KSACache(windows=[2, 2, 1000], chunk=8, max_length=4096)

    A layer is full when window * chunk >= max_length (default: config.max_position_embeddings).
    """

    def __init__(
        self,
        config=None,
        *,
        windows: list[int] | None = None,
        chunk: int | None = None,
        summaries: int | None = None,
        summaries_visible: bool | None = None,
        max_length: int | None = None,
    ):
        windows = windows if windows is not None else list(config.ksa_windows)
        self.chunk = chunk if chunk is not None else config.ksa_chunk
        self.summaries = summaries if summaries is not None else config.ksa_summaries
        visible = summaries_visible if summaries_visible is not None else getattr(config, "ksa_summaries_visible", True)
        if max_length is None:
            max_length = getattr(config, "max_position_embeddings", None) or 1 << 62
        self.max_length = max_length
        self.windows = windows
        layers = [
            KSACacheLayer(
                w, self.chunk, self.summaries, full=w * self.chunk >= max_length, summaries_visible=visible,
                max_length=max_length if max_length < 1 << 62 else None,
            )
            for w in windows
        ]
        super().__init__(layers=layers)
        self.text_len: torch.Tensor | None = None  # [B] text tokens seen per row
        self.columns_seen = 0  # columns of the (padded) input_ids consumed so far, for generate()

    @property
    def is_prefilled(self) -> bool:
        return self.text_len is not None

    def begin_step(self, pos: torch.Tensor) -> None:
        """Check the step fits: a full layer must never see text beyond its window."""
        top = int(pos.max()) // self.chunk
        for i, layer in enumerate(self.layers):
            if layer.full and top > layer.window:
                raise KSACacheError(
                    f"text position {int(pos.max())} exceeds the window of full layer {i} "
                    f"({layer.window} chunks); build the cache with a larger max_length"
                )

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.text_len is None else int(self.text_len.max())

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    # rows (prompts) can be repeated after one prefill, selected when some finish, or reordered
    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.text_len is not None:
            self.text_len = self.text_len.repeat_interleave(repeats, 0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.text_len is not None:
            self.text_len = self.text_len.index_select(0, indices.to(self.text_len.device))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)
