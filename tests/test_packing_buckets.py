"""Shared-prompt rows at any length: bucketed lengths, a BlockMask built without compilation, and a
bounded number of compiled graphs over many packed lengths."""

from __future__ import annotations

import random
import warnings
from contextlib import contextmanager

import pytest
import torch

from golong.packing import (
    TILE,
    SharedPieces,
    _shared_rule,
    bucket_length,
    pack,
    pack_shared,
    packed_logprobs,
    shared_attention,
    shared_block_mask,
    shared_mask,
)


def test_bucket_lengths_bound_padding_and_count():
    lengths = range(1, 70_000)
    buckets = [bucket_length(n) for n in lengths]
    for n, b in zip(lengths, buckets, strict=True):
        assert b >= n and b % TILE == 0
        assert b - n < max(n / 8, TILE), n
    assert all(a <= b for a, b in zip(buckets, buckets[1:], strict=False))  # monotone
    assert len({bucket_length(n) for n in range(8193, 16385)}) == 8  # 8 per octave
    assert len({bucket_length(n) for n in range(1, 32769)}) <= 8 + 8 * 5  # up to 1K, then 5 octaves


def _random_units(rng: random.Random, vocab: int = 100):
    units = []
    for _ in range(rng.randint(1, 4)):
        prompt = [rng.randrange(5, vocab) for _ in range(rng.randint(1, 300))]
        responses = [[rng.randrange(5, vocab) for _ in range(rng.randint(0, 200))] for _ in range(rng.randint(0, 4))]
        units.append((prompt, responses))
    return units


def _dense_rule(row):
    docs, members = row.docs, row.members
    q, k = torch.arange(docs.numel())[:, None], torch.arange(docs.numel())[None, :]
    return (docs[q] == docs[k]) & (k <= q) & ((members[k] < 0) | (members[k] == members[q]))


def _implied_dense(block, row) -> torch.Tensor:
    """The mask a BlockMask implies: full tiles all True, partial tiles through mask_mod, others False."""
    length = row.docs.numel()
    n = -(-length // TILE)
    out = torch.zeros(n * TILE, n * TILE, dtype=torch.bool)
    idx = torch.arange(n * TILE)
    valid = block.mask_mod(None, None, idx[:, None], idx[None, :])
    for qt in range(n):
        rows = slice(qt * TILE, (qt + 1) * TILE)
        for j in range(int(block.full_kv_num_blocks[0, 0, qt])):
            kt = int(block.full_kv_indices[0, 0, qt, j])
            out[rows, kt * TILE : (kt + 1) * TILE] = True
        for j in range(int(block.kv_num_blocks[0, 0, qt])):
            kt = int(block.kv_indices[0, 0, qt, j])
            cols = slice(kt * TILE, (kt + 1) * TILE)
            out[rows, cols] = valid[rows, cols]
    return out[:length, :length]


def _tile_sets(num, idx):
    return [sorted(idx[0, 0, q, : int(num[0, 0, q])].tolist()) for q in range(num.shape[-1])]


@pytest.mark.parametrize("seed", range(6))
def test_direct_block_mask_equals_create_block_mask(seed, monkeypatch):
    """The BlockMask built from the row's spans has the same partial and full tiles as
    create_block_mask evaluating the rule pair by pair, and implies exactly the dense rule."""
    from torch.nn.attention.flex_attention import create_block_mask

    if seed >= 4:  # slabs of one query tile, and of three (13 tiles): the slab loop, not just one pass
        monkeypatch.setattr("ksa.flex_attention.SLAB_COUNTS", 1 if seed == 4 else TILE * 40)
    rng = random.Random(seed)
    units = _random_units(rng)
    plain = pack_shared(units)
    row = pack_shared(units, pad_to=bucket_length(plain.input_ids.shape[1])) if seed % 2 else plain
    got = shared_block_mask(row, "cpu")
    length = row.docs.numel()
    ref = create_block_mask(_shared_rule(row.docs, row.members), 1, 1, length, length,
                            device="cpu", BLOCK_SIZE=TILE)
    assert torch.equal(got.kv_num_blocks, ref.kv_num_blocks)
    assert torch.equal(got.full_kv_num_blocks, ref.full_kv_num_blocks)
    assert _tile_sets(got.kv_num_blocks, got.kv_indices) == _tile_sets(ref.kv_num_blocks, ref.kv_indices)
    assert _tile_sets(got.full_kv_num_blocks, got.full_kv_indices) == _tile_sets(ref.full_kv_num_blocks, ref.full_kv_indices)
    assert torch.equal(_implied_dense(got, row), _dense_rule(row))


def test_padding_is_a_unit_of_its_own():
    units = _random_units(random.Random(7))
    plain = pack_shared(units)
    row = pack_shared(units, pad_to=bucket_length(plain.input_ids.shape[1]) + TILE)
    n = plain.input_ids.shape[1]
    assert row.padding == row.input_ids.shape[1] - n > 0
    assert row.spans == plain.spans and row.response_at == plain.response_at
    dense = _dense_rule(row)
    assert not dense[:n, n:].any() and not dense[n:, :n].any()  # nothing attends to padding, padding to nothing real
    assert torch.equal(dense[n:, n:], torch.ones(row.padding, row.padding, dtype=torch.bool).tril())  # finite softmax rows


def logprobs_and_grads(model, row) -> tuple[torch.Tensor, torch.Tensor]:
    """A row's response log-probs (concatenated) and the weight gradients of a weighted sum of them."""
    model.zero_grad()
    with shared_attention(model, row):
        lps, _ = packed_logprobs(model, row, chunk=64)
        lp = torch.cat(lps)
        (lp * torch.linspace(-1, 1, lp.numel(), device=lp.device)).sum().backward()
    return lp.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_padded_rows_give_the_same_logprobs_and_gradients(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    units = _random_units(random.Random(3), vocab=model.config.vocab_size)
    results = [logprobs_and_grads(model, pack_shared(units, pad_to=pad)) for pad in (None, 640)]
    assert results[1][0].numel() == results[0][0].numel()
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-4)
    assert torch.isfinite(results[1][1]).all()


def test_block_mask_attention_with_padding_equals_dense():
    """FlexAttention under the direct BlockMask (eager, forward: the CPU has no flex backward) equals
    SDPA under the dense mask on a padded row, real rows compared."""
    from torch.nn.attention.flex_attention import flex_attention

    units = _random_units(random.Random(11))
    n = pack_shared(units).input_ids.shape[1]
    row = pack_shared(units, pad_to=bucket_length(n))
    length = row.input_ids.shape[1]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, length, 16, generator=g) for h in (4, 2, 2))
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=shared_mask(row, "cpu"), enable_gqa=True)
    with _quiet():  # the unfused CPU path warns
        flex = flex_attention(q, k, v, block_mask=shared_mask(row, "cpu", block=True), enable_gqa=True)
    torch.testing.assert_close(flex[:, :, :n], dense[:, :, :n], atol=1e-5, rtol=1e-5)


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _count_graphs_over_lengths(model, make_row, lengths, grad: bool, mask=None) -> int:
    """Graphs dynamo builds while rows of the given lengths go through the compiled layers."""
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    g = torch.Generator().manual_seed(0)
    for n in lengths:
        row = make_row(torch.randint(5, model.config.vocab_size, (n,), generator=g).tolist())
        with torch.set_grad_enabled(grad), shared_attention(model, row):
            if mask is None:
                lps, _ = packed_logprobs(model, row)
                if grad:
                    torch.cat(lps).sum().backward()
            else:
                model.model(input_ids=row.input_ids, position_ids=row.position_ids, use_cache=False,
                            golong_mask=mask(row))
    return counters["stats"]["unique_graphs"] - before


@pytest.mark.parametrize("path", [pytest.param("packed", marks=pytest.mark.slow),
                                  pytest.param("shared_dense", marks=pytest.mark.slow), "shared_block", "shared_pieces"])
def test_compiled_layers_settle_over_many_lengths(tiny_model_dir, path):
    """Twelve packed lengths through compiled decoder layers, dynamic in the length as compile_layers
    makes them (the aot_eager backend: dynamo's graph decisions without inductor's compile time). The
    layers' graphs are never rebuilt: ordinary packed rows and shared rows with the dense CPU mask add
    no graph after the warm-up; with the BlockMask (the GPU's path, forward here) only the
    FlexAttention kernel, compiled between the layers' graphs, adds one graph per new bucket length; the
    SDPA pieces (a new SharedPieces object every row) add none."""
    import torch._dynamo
    from transformers import AutoModelForCausalLM

    torch._dynamo.reset()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for layer in model.model.layers:
        layer.compile(backend="aot_eager", dynamic=True)
    warm, lengths = [150, 171, 260, 299], [203, 333, 380, 401, 455, 470, 512, 530]

    def shared(ids):
        p, r = ids[: len(ids) // 2], ids[len(ids) // 2 :]
        return pack_shared([(p, [r[: len(r) // 2], r[len(r) // 2 :]])], pad_to=bucket_length(len(ids)))

    def count(ns):
        if path == "packed":
            return _count_graphs_over_lengths(model, lambda ids: pack([ids[:50]], [ids[50:]]), ns, grad=True)
        if path == "shared_dense":
            return _count_graphs_over_lengths(model, shared, ns, grad=True)
        if path == "shared_pieces":  # optim.shared_prompt_kernel=sdpa: SDPA piece by piece, between the graphs

            def pieces_row(ids):
                row = shared(ids)
                row.kernel = "sdpa"
                assert isinstance(shared_mask(row, "cpu"), SharedPieces)
                return row

            return _count_graphs_over_lengths(model, pieces_row, ns, grad=True)
        with _quiet():
            return _count_graphs_over_lengths(model, shared, ns, grad=False, mask=lambda row: shared_mask(row, "cpu", block=True))

    assert count(warm) >= 1
    new_buckets = {bucket_length(n) for n in lengths} - {bucket_length(n) for n in warm}
    assert new_buckets == {512, 640}
    assert count(lengths) == (len(new_buckets) if path == "shared_block" else 0)
