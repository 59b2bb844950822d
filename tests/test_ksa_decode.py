"""ksa.decode: one cached decode step's columns agree with the full-sequence layout (ksa/layout.py),
and `is_ksa` tells KSA configs from others."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import ksa


@pytest.mark.parametrize(("chunk", "summaries"), [(8, 1), (4, 2), (6, 3)])
def test_summary_positions_match_the_expanded_layout(chunk, summaries):
    positions, is_sum = ksa.expand_positions(5 * chunk, chunk, summaries)
    by_chunk = positions[is_sum].view(5, summaries)
    pos = torch.arange(5 * chunk)  # any text position of chunk c names the summaries of chunk c
    assert torch.equal(ksa.summary_positions(pos, chunk, summaries), by_chunk.repeat_interleave(chunk, 0))
    assert [p for p in range(3 * chunk) if ksa.completes_chunk(p, chunk)] == [chunk - 1, 2 * chunk - 1, 3 * chunk - 1]


def test_mix_summary_blends_and_one_keeps_the_summary_projection():
    summary, shared = torch.tensor([2.0]), torch.tensor([10.0])
    assert ksa.mix_summary(summary, shared, 1.0) is summary
    assert torch.equal(ksa.mix_summary(summary, shared, 0.25), torch.tensor([0.25 * 2 + 0.75 * 10]))


def test_is_ksa():
    assert ksa.is_ksa(SimpleNamespace(ksa_chunk=8)) and not ksa.is_ksa(SimpleNamespace(model_type="qwen3"))
    assert not ksa.is_ksa(SimpleNamespace(ksa_chunk=None))
