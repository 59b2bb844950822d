"""One cached decode step of a KSA model, outside attention: the columns it feeds and how summary
slots differ from text slots.

A step feeds each row its next text token at text position `pos`. When that token completes a
chunk ((pos + 1) % C == 0), the chunk's S summary slots go in with it as extra columns: their input
is the summary embedding, summary j of chunk c sits at text position c*C + ((j+1)*C)//S - 1 (the
last position of its slice, as in ksa/layout.py), and where the model has summary q/k/v projections
they are blended with the shared ones (`mix_summary`). The model's cached decode (ksa/modeling.py)
and an engine that runs the layers itself (golong's static engine) both build their steps here.
"""

from __future__ import annotations

import torch


def completes_chunk(pos, chunk: int):
    """Does the token at text position `pos` (int or tensor) complete its chunk?"""
    return (pos + 1) % chunk == 0


def summary_positions(pos: torch.Tensor, chunk: int, summaries: int) -> torch.Tensor:
    """Text positions [B, S] of the summaries of chunk pos // C, for pos [B]."""
    j = torch.arange(summaries, device=pos.device)
    return (pos // chunk)[:, None] * chunk + ((j + 1) * chunk) // summaries - 1


def step_inputs(model, ids: torch.Tensor, pos: torch.Tensor, summaries: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Input hidden states and positions of one step of a KSA causal LM: ids, pos [B] ->
    ([B, n, D], [B, n]), column 0 the text token, then (summaries=True) the S summary slots of its
    chunk (n = 1 + S) for every row."""
    hidden = model.model.embed_tokens(ids)[:, None]
    positions = pos[:, None]
    if summaries:
        cfg = model.config
        embed = model.summary_embed.weight[None].expand(ids.shape[0], -1, -1).to(hidden.dtype)
        hidden = torch.cat([hidden, embed], 1)
        positions = torch.cat([positions, summary_positions(pos, cfg.ksa_chunk, cfg.ksa_summaries)], 1)
    return hidden, positions


def mix_summary(summary: torch.Tensor, shared: torch.Tensor, mix: float) -> torch.Tensor:
    """A summary slot's q, k or v: mix * summary projection + (1 - mix) * shared projection (each after
    the per-head norm where the model has one); mix = ksa_mix_coeff, 1 = the summary projection alone."""
    if mix == 1.0:
        return summary
    return mix * summary + (1.0 - mix) * shared
