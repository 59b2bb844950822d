"""Packed, chunked log-probs equal the plain per-sequence computation."""

from __future__ import annotations

import shutil

import pytest
import torch

from golong.packing import (
    pack,
    pack_shared,
    packed_logprobs,
    pad_stack,
    plan_micro_batches,
    plan_shared_micro_batches,
)


def test_first_fit_decreasing_respects_budget():
    lengths = [9, 2, 7, 3, 5, 1, 12, 4]
    bins = plan_micro_batches(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    for b in bins:
        assert sum(lengths[i] for i in b) <= 10 or len(b) == 1  # 12 > budget gets its own bin
    assert [12] in [[lengths[i] for i in b] for b in bins]
    assert len(bins) == 5  # 12 | 9+1 | 7+3 | 5+4 | 2 ... FFD: [12], [9,1], [7,3], [5,4], [2]


def _reference_logprobs(model, prompt, response, temperature=1.0):
    """One sequence alone through the full model: log softmax of the logits at response positions."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0].float() / temperature
    lp = torch.log_softmax(logits, -1)
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
    return lp[pos, torch.tensor(response)]


def _random_sequences(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 9), (17, 3), (1, 6), (11, 1), (8, 14)]
    return [
        (torch.randint(5, vocab, (p,), generator=g).tolist(), torch.randint(5, vocab, (r,), generator=g).tolist())
        for p, r in shapes
    ]


@pytest.fixture(scope="module", params=[("qwen3", "sdpa"), ("qwen3", "eager"), ("llama", "sdpa")], ids=str)
def tiny_lm(request, tiny_model_dir, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    arch, attn = request.param
    path = tiny_model_dir if arch == "qwen3" else tiny_llama_dir
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    return model.eval()


def test_packed_equals_separate_forwards(tiny_lm):
    seqs = _random_sequences(tiny_lm.config.vocab_size)
    row = pack([p for p, _ in seqs], [r for _, r in seqs])
    with torch.no_grad():
        got, ent = packed_logprobs(tiny_lm, row, chunk=4)
        for (p, r), lp, e in zip(seqs, got, ent, strict=True):
            want = _reference_logprobs(tiny_lm, p, r)
            assert lp.shape == (len(r),) and e.shape == (len(r),)
            torch.testing.assert_close(lp, want, atol=1e-5, rtol=0)


def test_packing_really_separates_sequences(tiny_model_dir):
    """Guard against a silent fallback to one causal sequence: positions alone must not leak context."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    (p1, r1), (p2, r2) = _random_sequences(model.config.vocab_size)[:2]
    with torch.no_grad():
        alone = packed_logprobs(model, pack([p2], [r2]))[0][0]
        after = packed_logprobs(model, pack([p1, p2], [r1, r2]))[0][1]
        # the same tokens as one long sequence (no restart of positions) do see the first sequence
        ids = torch.tensor([p1 + r1 + p2 + r2])
        lp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
        start = len(p1) + len(r1) + len(p2)
        joined = lp[torch.arange(start - 1, start - 1 + len(r2)), torch.tensor(r2)]
    torch.testing.assert_close(after, alone, atol=1e-5, rtol=0)
    assert (joined - alone).abs().max() > 1e-3


def test_chunked_equals_unchunked_with_grad(tiny_lm):
    seqs = _random_sequences(tiny_lm.config.vocab_size, seed=1)
    row = pack([p for p, _ in seqs], [r for _, r in seqs])
    grads = []
    values = []
    for chunk in (3, 10_000):
        tiny_lm.zero_grad()
        lps, ents = packed_logprobs(tiny_lm, row, chunk=chunk, temperature=0.7)
        (torch.cat(lps) * torch.linspace(-1, 1, row.response_tokens)).sum().backward()
        values.append((torch.cat(lps).detach(), torch.cat(ents)))
        grads.append(torch.cat([p.grad.flatten() for p in tiny_lm.parameters() if p.grad is not None]))
    torch.testing.assert_close(values[0][0], values[1][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(values[0][1], values[1][1], atol=1e-6, rtol=0)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)  # summation order differs
    # temperature divides the logits exactly like the plain computation
    p, r = seqs[0]
    with torch.no_grad():
        torch.testing.assert_close(values[0][0][: len(r)], _reference_logprobs(tiny_lm, p, r, 0.7), atol=1e-5, rtol=0)


def test_entropy_matches_definition(tiny_lm):
    p, r = _random_sequences(tiny_lm.config.vocab_size)[0]
    with torch.no_grad():
        _, ent = packed_logprobs(tiny_lm, pack([p], [r]), chunk=2)
        logits = tiny_lm(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : len(p) + len(r) - 1]
        probs = torch.softmax(logits, -1)
        want = -(probs * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(ent[0], want, atol=1e-5, rtol=0)


def test_pad_stack():
    x, m = pad_stack([torch.tensor([1.0, 2.0]), torch.tensor([3.0])])
    assert x.tolist() == [[1.0, 2.0], [3.0, 0.0]] and m.tolist() == [[True, True], [True, False]]


def test_ksa_model_falls_back_to_padded_batches(tiny_model_dir):
    """A KSA policy cannot be packed by positions; its log-probs must still equal its own forward."""
    ksa = pytest.importorskip("ksa.modeling")
    from transformers import AutoModelForCausalLM

    from golong.packing import supports_packing

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    from ksa.config import KSAConfig

    model = ksa.convert_model(base, KSAConfig(chunk=4, summaries=1, windows=[1, 3])).eval()
    with torch.no_grad():
        model.summary_embed.weight.normal_()
    assert not supports_packing(model)
    seqs = _random_sequences(model.config.vocab_size, seed=2)
    row = pack([p for p, _ in seqs], [r for _, r in seqs])
    with torch.no_grad():
        got, _ = packed_logprobs(model, row, chunk=4)
        for (p, r), lp in zip(seqs, got, strict=True):
            torch.testing.assert_close(lp, _reference_logprobs(model, p, r), atol=1e-5, rtol=0)
    assert model.get_output_embeddings() is model.lm_head and isinstance(model.lm_head, torch.nn.Linear)


# ---------------------------------------------------------------- shared prompts


def _groups(vocab, seed=0):
    """Two prompts with 3 and 2 responses of different lengths (one empty)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(5, vocab, (n,), generator=g).tolist()  # noqa: E731
    return [(rand(13), [rand(5), rand(1), rand(7)]), (rand(6), [rand(4), rand(0)])]


def test_shared_prompt_row_equals_separate_forwards(tiny_lm):
    groups = _groups(tiny_lm.config.vocab_size)
    row = pack_shared(groups)
    assert row.input_ids.shape[1] == 13 + 5 + 1 + 7 + 6 + 4  # each prompt once
    with torch.no_grad():
        got, ent = packed_logprobs(tiny_lm, row, chunk=4)
    flat = [(p, r) for p, rs in groups for r in rs]
    assert [lp.numel() for lp in got] == [len(r) for _, r in flat]
    for (p, r), lp in zip(flat, got, strict=True):
        if r:
            torch.testing.assert_close(lp, _reference_logprobs(tiny_lm, p, r), atol=1e-5, rtol=0)


def test_shared_prompt_gradients_equal_plain_packing(tiny_lm):
    """The prompt's backward runs once per group and collects every response's gradient: the
    parameter gradients equal those of packing each (prompt, response) on its own."""
    groups = _groups(tiny_lm.config.vocab_size, seed=3)
    flat = [(p, r) for p, rs in groups for r in rs]
    grads, values = [], []
    for row in (pack_shared(groups), pack([p for p, _ in flat], [r for _, r in flat])):
        tiny_lm.zero_grad()
        lps, _ = packed_logprobs(tiny_lm, row, chunk=3, temperature=0.8)
        lp = torch.cat(lps)
        (lp * torch.linspace(-1, 1, lp.numel())).sum().backward()
        values.append(lp.detach())
        grads.append(torch.cat([p.grad.flatten() for p in tiny_lm.parameters() if p.grad is not None]))
    torch.testing.assert_close(values[0], values[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_shared_micro_batches_split_big_groups_and_keep_every_sample():
    # group 0: prompt 10 + responses 4, 4, 4; group 1: prompt 3 + responses 2, 9
    bins = plan_shared_micro_batches([10, 3], [[(0, 4), (1, 4), (2, 4)], [(3, 2), (4, 9)]], budget=18)
    units = [u for b in bins for u in b]
    assert sorted(i for u in units for i in u) == [0, 1, 2, 3, 4]
    assert [0, 1] in units and [2] in units  # 10 + 4 + 4 fits, the third response repeats the prompt
    for b in bins:
        size = sum((10 if u[0] < 3 else 3) + sum([4, 4, 4, 2, 9][i] for i in u) for u in b)
        assert size <= 18 or len(b) == 1


def test_shared_rows_refuse_models_that_cannot_take_them(tiny_tokenizer):
    """A sliding-window layer would need the window in the shared mask (KSA models take shared rows:
    tests/test_ksa_shared.py)."""
    from tests.tiny import build_model

    model = build_model(tiny_tokenizer, arch="qwen2")
    model.config.layer_types = ["sliding_attention", "full_attention"]
    with pytest.raises(ValueError, match="shared-prompt"):
        packed_logprobs(model, pack_shared(_groups(model.config.vocab_size)))


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_shared_prompt_block_mask_path_equals_dense_mask():
    """The CUDA path (compiled FlexAttention under a BlockMask) computes the same attention as the
    dense mask, here on the CPU in forward (FlexAttention has no CPU backward)."""
    from golong.packing import _shared_prompt_attention, shared_mask

    row = pack_shared(_groups(100, seed=5))
    length = row.input_ids.shape[1]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, length, 16, generator=g) for h in (4, 2, 2))
    dense, _ = _shared_prompt_attention(None, q, k, v, None, scaling=0.25, golong_mask=shared_mask(row, "cpu"))
    block, _ = _shared_prompt_attention(None, q, k, v, None, scaling=0.25, golong_mask=shared_mask(row, "cpu", block=True))
    torch.testing.assert_close(block, dense, atol=1e-5, rtol=1e-5)
