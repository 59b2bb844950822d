"""The KSA interleaved layout: where summary tokens go and which RoPE position each token takes.

Text is cut into chunks of C tokens; after every *full* chunk, S summary tokens are inserted, so a
block is B = C + S expanded slots:  t0 .. t{C-1} s0 .. s{S-1} | tC .. t{2C-1} s0 .. | ... | partial
A trailing partial chunk gets no summaries (a summary exists only once its chunk is complete —
the layout the generator sees while decoding, hence the one the learner must train on).

Positions: text keeps its original position. Summary j of chunk c (0 <= j < S) closes the j-th of
S equal slices of the chunk and takes the last text position of that slice:
    pos = c*C + ((j + 1) * C) // S - 1      (S = 1: the chunk's last text position c*C + C - 1)
"""

from __future__ import annotations

import torch


def expanded_length(text_len: int, chunk: int = 8, summaries: int = 1) -> int:
    """Length L of the expanded sequence for `text_len` text tokens."""
    return text_len + (text_len // chunk) * summaries


def expand_positions(text_len: int, chunk: int = 8, summaries: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE position and summary flag of every expanded slot.

    Returns (positions: LongTensor[L], is_summary: BoolTensor[L]) with L = expanded_length(...).
    """
    _check(chunk, summaries)
    block = chunk + summaries
    length = expanded_length(text_len, chunk, summaries)
    idx = torch.arange(length)
    c, r = idx // block, idx % block
    is_summary = r >= chunk
    j = (r - chunk).clamp(min=0)
    summary_pos = c * chunk + ((j + 1) * chunk) // summaries - 1
    positions = torch.where(is_summary, summary_pos, c * chunk + r)
    return positions, is_summary


def text_index(text_len: int, chunk: int = 8, summaries: int = 1) -> torch.Tensor:
    """Expanded index of each text token: LongTensor[text_len] (text token t sits at t + (t // C) * S)."""
    _check(chunk, summaries)
    t = torch.arange(text_len)
    return t + (t // chunk) * summaries


def expand_ids(
    input_ids: torch.Tensor, summary_ids: torch.Tensor | list[int], chunk: int = 8
) -> torch.Tensor:
    """Insert the S summary token ids after every full chunk: [..., T] -> [..., L]."""
    summary_ids = torch.as_tensor(summary_ids, dtype=input_ids.dtype, device=input_ids.device)
    summaries = summary_ids.numel()
    text_len = input_ids.shape[-1]
    length = expanded_length(text_len, chunk, summaries)
    _, is_summary = expand_positions(text_len, chunk, summaries)
    is_summary = is_summary.to(input_ids.device)
    out = input_ids.new_empty(*input_ids.shape[:-1], length)
    out[..., ~is_summary] = input_ids
    n_full = text_len // chunk
    out[..., is_summary] = summary_ids.repeat(n_full).expand(*input_ids.shape[:-1], n_full * summaries)
    return out


def drop_summaries(x: torch.Tensor, text_len: int, chunk: int = 8, summaries: int = 1, dim: int = 1) -> torch.Tensor:
    """Keep only text slots of an expanded tensor along `dim` (e.g. hidden states [B, L, D] -> [B, T, D])."""
    return x.index_select(dim, text_index(text_len, chunk, summaries).to(x.device))


def _check(chunk: int, summaries: int) -> None:
    if chunk < 1 or summaries < 1:
        raise ValueError(f"KSA needs chunk >= 1 and summaries >= 1, got chunk={chunk}, summaries={summaries}")
    if summaries > chunk:
        raise ValueError(f"KSA needs summaries <= chunk (each summary closes a slice), got {summaries} > {chunk}")
