"""The batched KSA decode cache: generate() with it equals full recomputation, token by token."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

import ksa
from ksa.cache import KSACacheError
from tests.test_ksa_model import ksa_tiny


def left_padded(lens, vocab, pad, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lens)
    ids = torch.full((len(lens), T), pad)
    mask = torch.zeros(len(lens), T, dtype=torch.long)
    for b, n in enumerate(lens):
        ids[b, T - n :] = torch.randint(5, vocab, (n,), generator=g)
        mask[b, T - n :] = 1
    return ids, mask


def greedy_by_recomputation(model, ids, mask, steps):
    """Greedy decoding with a full forward over the whole sequence at every step (no cache)."""
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(ids, attention_mask=mask).logits[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, mask.new_ones(len(ids), 1)], 1)
    return ids


def check_greedy(tok, arch, windows, steps, lens):
    _, model = ksa_tiny(tok, arch, windows=windows, chunk=4)
    ids, mask = left_padded(lens, len(tok), tok.pad_token_id, seed=1)
    cfg = GenerationConfig(max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    want = greedy_by_recomputation(model, ids, mask, steps)
    assert out.shape == want.shape
    assert torch.equal(out, want)
    assert len(set(out[:, -steps:].flatten().tolist())) > 20  # the text is not one repeated token


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_greedy_generate_with_cache_equals_recomputation(tiny_tokenizer, arch):
    # three windows: ring of 1 chunk, ring of 3 chunks, full (10000 * 4 >= max_position_embeddings);
    # 3 rows of different prompt lengths, so chunks complete at different steps in each row
    check_greedy(tiny_tokenizer, arch, (1, 3, 10000), steps=48, lens=[7, 13, 2])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_greedy_generate_with_cache_equals_recomputation_long(tiny_tokenizer, arch):
    check_greedy(tiny_tokenizer, arch, (2, 5, 10000), steps=310, lens=[7, 13, 2])  # ~78 chunk boundaries per row


@pytest.mark.parametrize(
    "summaries,windows,visible", [(1, (1, 3, 10000), True), (2, (2, 1, 10000), True), (1, (1, 2, 10000), False)]
)
def test_teacher_forced_logits_through_cache_equal_one_forward(tiny_tokenizer, summaries, windows, visible):
    _, model = ksa_tiny(tiny_tokenizer, "qwen3", windows=windows, chunk=4, summaries=summaries,
                        summaries_visible=visible)
    ids, mask = left_padded([9, 22, 15], len(tiny_tokenizer), tiny_tokenizer.pad_token_id, seed=2)
    tail = torch.randint(5, len(tiny_tokenizer), (3, 41), generator=torch.Generator().manual_seed(4))
    full_ids = torch.cat([ids, tail], 1)
    full_mask = torch.cat([mask, mask.new_ones(3, 41)], 1)
    with torch.no_grad():
        want = model(full_ids, attention_mask=full_mask).logits
        cache = ksa.KSACache(model.config)
        got = [model(ids, attention_mask=mask, cache=cache).logits[:, -1]]
        i = 0
        for n in (1, 1, 3, 1, 5, 1, 1, 8, 2, 1, 1, 16):  # single tokens and several per call
            got.append(model(tail[:, i : i + n], cache=cache).logits)
            i += n
        assert i == 41
    got = torch.cat([got[0][:, None]] + got[1:], 1)
    torch.testing.assert_close(got, want[:, ids.shape[1] - 1 :], atol=1e-4, rtol=1e-4)


def test_ring_layer_memory_stays_bounded(tiny_tokenizer):
    _, model = ksa_tiny(tiny_tokenizer, "qwen3", windows=(2, 10000), chunk=4)
    ids, mask = left_padded([5, 11], len(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    cache = ksa.KSACache(model.config)
    with torch.no_grad():
        model(ids, attention_mask=mask, cache=cache)
        for _ in range(60):
            model(torch.randint(5, 100, (2, 1)), cache=cache)
    ring, full = cache.layers
    assert ring.keys.shape[1] == (2 + 1) * 4  # (W+1)*C text slots, however long the sequence
    assert int(ring.sum_valid.sum(1).max()) == (11 + 60) // 4  # one summary per completed chunk
    assert full.sum_keys is None and full.keys.shape[1] >= 71  # full layers: all text, no summaries
    assert cache.text_len.tolist() == [65, 71]


def test_sampling_generate_runs_and_full_layer_overflow_is_an_error(tiny_tokenizer):
    _, model = ksa_tiny(tiny_tokenizer, "llama", windows=(1, 8), chunk=4)
    ids, mask = left_padded([6, 3], len(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=12, top_k=20)
    assert out.shape[0] == 2 and out.shape[1] <= 6 + 12
    cache = ksa.KSACache(model.config, max_length=32)  # the window-8 layer counts as full up to 32 tokens
    with torch.no_grad(), pytest.raises(KSACacheError, match="full layer 1"):
        model(ids, attention_mask=mask, cache=cache)
        for _ in range(40):
            model(torch.randint(5, 100, (2, 1)), cache=cache)


def test_prefill_once_repeat_rows_then_drop_rows(tiny_tokenizer):
    """The rollout engine's pattern: one prefill per prompt, G copies of its cache, finished rows leave."""
    _, model = ksa_tiny(tiny_tokenizer, "qwen3", windows=(1, 10000), chunk=4)
    ids, mask = left_padded([5, 10], len(tiny_tokenizer), tiny_tokenizer.pad_token_id, seed=3)
    steps = torch.randint(5, len(tiny_tokenizer), (4, 20), generator=torch.Generator().manual_seed(8))
    rows = [0, 1, 2, 3]
    cache = ksa.KSACache(model.config)
    with torch.no_grad():
        model(ids, attention_mask=mask, cache=cache)
        cache.batch_repeat_interleave(2)  # rows: prompt 0, prompt 0, prompt 1, prompt 1
        for t in range(20):
            if t == 9:
                rows = [0, 2, 3]
                cache.batch_select_indices(torch.tensor(rows))
            got = model(steps[rows, t : t + 1], cache=cache).logits[:, 0]
            for i, r in enumerate(rows):
                prompt = ids[r // 2][mask[r // 2].bool()]
                want = model(torch.cat([prompt, steps[r, : t + 1]])[None]).logits[0, -1]
                torch.testing.assert_close(got[i], want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_greedy_generate_with_cache_on_gpu(tiny_tokenizer):
    _, model = ksa_tiny(tiny_tokenizer, "qwen3", windows=(1, 3, 10000), chunk=4)
    model = model.cuda()
    ids, mask = left_padded([7, 13, 2], len(tiny_tokenizer), tiny_tokenizer.pad_token_id, seed=1)
    ids, mask = ids.cuda(), mask.cuda()
    cfg = GenerationConfig(max_new_tokens=60, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    assert torch.equal(out, greedy_by_recomputation(model, ids, mask, 60))


def test_write_slots_equals_a_loop_eager_and_compiled():
    """ksa.static_cache.write_slots (the decode write of every static KSA layout): store[b, h, slots[b]]
    (or [b, h, slots[b, j]]) = values for rows b < B and every head, rows >= B untouched, in place,
    also through torch.compile (the decode layers' path)."""
    from ksa.static_cache import write_slots

    gen = torch.Generator().manual_seed(0)
    cases = [(torch.tensor([4, 0, 8]), torch.randn(3, 2, 3, generator=gen)),
             (torch.tensor([[1, 2], [5, 6], [7, 3]]), torch.randn(3, 2, 2, 3, generator=gen))]
    for slots, values in cases:
        ref = torch.randn(5, 2, 9, 3, generator=gen)
        stores = [ref.clone(), ref.clone()]
        for b in range(3):
            for h in range(2):
                ref[b, h, slots[b]] = values[b, h]
        write_slots(stores[0], slots, values)
        compiled = torch.compile(write_slots, fullgraph=True)
        ptr = stores[1].data_ptr()
        compiled(stores[1], slots, values)
        assert torch.equal(stores[0], ref) and torch.equal(stores[1], ref) and stores[1].data_ptr() == ptr
