"""KSA layout and mask against a slot-by-slot construction written straight from the KSA report's description."""

import pytest
import torch

from ksa.layout import drop_summaries, expand_ids, expand_positions, expanded_length, text_index
from ksa.mask import dense_mask, mask_mod


def spec_layout(text_len, chunk, summaries):
    """Walk the text: emit each token; after every full chunk emit S summaries."""
    slots = []  # (kind, position, chunk index)
    for t in range(text_len):
        slots.append(("text", t, t // chunk))
        if (t + 1) % chunk == 0:
            c = t // chunk
            for j in range(summaries):
                slots.append(("sum", c * chunk + ((j + 1) * chunk) // summaries - 1, c))
    return slots


def spec_mask(text_len, chunk, summaries, window):
    slots = spec_layout(text_len, chunk, summaries)
    n = len(slots)
    m = torch.zeros(n, n, dtype=torch.bool)
    for q, (qk, _, qc) in enumerate(slots):
        for k, (kk, _, kc) in enumerate(slots[: q + 1]):
            if qk == "sum":
                m[q, k] = kc == qc  # own chunk: its text and the summaries before it
            elif kk == "text":
                m[q, k] = qc - kc <= window  # raw text inside the window
            else:
                m[q, k] = qc - kc > window  # summaries of chunks older than the window
    return m


CASES = [(0, 8, 1), (7, 8, 1), (8, 8, 1), (19, 8, 1), (40, 8, 2), (23, 4, 1), (30, 4, 4), (13, 1, 1)]


@pytest.mark.parametrize("text_len,chunk,summaries", CASES)
def test_positions_match_spec(text_len, chunk, summaries):
    slots = spec_layout(text_len, chunk, summaries)
    pos, is_sum = expand_positions(text_len, chunk, summaries)
    assert len(pos) == expanded_length(text_len, chunk, summaries) == len(slots)
    assert pos.tolist() == [p for _, p, _ in slots]
    assert is_sum.tolist() == [k == "sum" for k, _, _ in slots]
    # text keeps its original positions, in order
    assert pos[~is_sum].tolist() == list(range(text_len))
    assert text_index(text_len, chunk, summaries).tolist() == [i for i, s in enumerate(slots) if s[0] == "text"]


def test_summary_positions_of_released_config():
    pos, is_sum = expand_positions(32, 8, 1)
    assert pos[is_sum].tolist() == [7, 15, 23, 31]  # each summary sits at its chunk's last text position


@pytest.mark.parametrize("text_len,chunk,summaries", CASES)
@pytest.mark.parametrize("window", [0, 1, 2, 100])
def test_dense_mask_matches_spec(text_len, chunk, summaries, window):
    assert torch.equal(dense_mask(text_len, chunk, summaries, window), spec_mask(text_len, chunk, summaries, window))


def test_mask_mod_equals_dense_mask():
    text_len, chunk, s, w = 45, 4, 2, 3
    dense = dense_mask(text_len, chunk, s, w)
    idx = torch.arange(dense.shape[0])
    via_mod = mask_mod(chunk, s, w)(0, 0, idx[:, None], idx[None, :])
    assert torch.equal(via_mod, dense)


def test_each_past_chunk_seen_once_and_full_window_is_causal_text():
    text_len, chunk = 64, 8
    m = dense_mask(text_len, chunk, 1, window=2)
    _, is_sum = expand_positions(text_len, chunk, 1)
    block = chunk + 1
    for q in torch.nonzero(~is_sum).flatten().tolist():
        seen_text = {k // block for k in torch.nonzero(m[q] & ~is_sum).flatten().tolist()}
        seen_sum = {k // block for k in torch.nonzero(m[q] & is_sum).flatten().tolist()}
        assert not (seen_text & seen_sum)
        assert seen_text | seen_sum == set(range(q // block + 1))
    full = dense_mask(text_len, chunk, 1, window=10**6)
    text = ~is_sum
    assert torch.equal(full[text][:, text], torch.ones(text_len, text_len).tril().bool())
    assert not full[text][:, is_sum].any()


def test_sca_drops_old_summaries():
    sca = dense_mask(40, 4, 1, 1, summaries_visible=False)
    _, is_sum = expand_positions(40, 4, 1)
    assert not sca[~is_sum][:, is_sum].any()


def test_expand_ids_and_drop_roundtrip():
    ids = torch.arange(1, 2 * 21 + 1).view(2, 21)
    e = expand_ids(ids, [900, 901], chunk=8)
    _, is_sum = expand_positions(21, 8, 2)
    assert e.shape == (2, expanded_length(21, 8, 2))
    assert (e[:, is_sum] >= 900).all()
    assert torch.equal(drop_summaries(e, 21, 8, 2, dim=1), ids)


def test_bad_layout_arguments():
    with pytest.raises(ValueError, match="chunk"):
        expand_positions(10, 0, 1)
    with pytest.raises(ValueError, match="summaries <= chunk"):
        expand_positions(10, 2, 3)
