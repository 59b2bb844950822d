"""KSA models: forward vs an independent dense-mask computation, padding, save/load, training."""

from __future__ import annotations

import pytest
import torch

import ksa
from ksa.config import KSAConfigError, parse_window_pattern
from tests.tiny import build_model


def spiced_base(tok, arch: str, layers: int = 2, seed: int = 0):
    """A tiny base model with weights large enough that attention patterns matter (std 0.15)."""
    base = build_model(tok, arch=arch, layers=layers, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in base.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
            else:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    return base.eval()


def ksa_tiny(tok, arch="qwen3", windows=(2, 5), chunk=4, summaries=1, seed=0, **kw):
    """(base, ksa_model) sharing weights; the summary embedding is random, not the mean embedding."""
    base = spiced_base(tok, arch, layers=len(windows), seed=seed)
    model = ksa.convert_model(base, ksa.KSAConfig(chunk=chunk, summaries=summaries, windows=list(windows), **kw))
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        model.summary_embed.weight.copy_(torch.randn(model.summary_embed.weight.shape, generator=g))
    return base, model.eval()


def slot_table(T: int, C: int, S: int):
    """Walk the text and write down every expanded slot: (is_summary, chunk, summary j, rope position)."""
    slots = []
    for t in range(T):
        slots.append((False, t // C, 0, t))
        if (t + 1) % C == 0:
            for j in range(S):
                slots.append((True, t // C, j, (t // C) * C + ((j + 1) * C) // S - 1))
    return slots


def slot_mask(slots, window: int, visible: bool = True) -> torch.Tensor:
    """The KSA rule written query by query, key by key (the KSA mask rule)."""
    L = len(slots)
    m = torch.zeros(L, L, dtype=torch.bool)
    for qi, (qs, qc, _, _) in enumerate(slots):
        for ki, (ks, kc, _, _) in enumerate(slots[: qi + 1]):
            if qs:
                m[qi, ki] = kc == qc
            elif not ks:
                m[qi, ki] = qc - kc <= window
            else:
                m[qi, ki] = visible and qc - kc > window
    return m


def dense_reference(base, summary_vecs, ids, C, S, windows, visible=True):
    """Logits of text tokens from the *base* model run on a hand-built expanded sequence with
    explicit 4D masks and position ids (one row)."""
    T = ids.numel()
    slots = slot_table(T, C, S)
    tok_emb = base.model.embed_tokens(ids)
    emb = torch.stack([summary_vecs[j] if s else tok_emb[sum(not x[0] for x in slots[:i])] for i, (s, _, j, _) in enumerate(slots)])
    pos = torch.tensor([p for *_, p in slots])[None]
    masks = [slot_mask(slots, w, visible)[None, None] for w in windows]
    if len(set(windows)) == 1:
        attn_mask = masks[0]
    else:  # Qwen3 picks a mask per layer by layer type
        names = ["full_attention", "sliding_attention"]
        base.config.layer_types = [names[i] for i in range(len(windows))]
        attn_mask = {names[i]: masks[i] for i in range(len(windows))}
    hidden = base.model(inputs_embeds=emb[None], position_ids=pos, attention_mask=attn_mask, use_cache=False).last_hidden_state
    text = torch.tensor([not s for s, *_ in slots])
    return base.lm_head(hidden[0, text])


@pytest.mark.parametrize(
    "arch,windows,summaries",
    [("qwen3", (2, 5), 1), ("qwen3", (1, 3), 2), ("llama", (2, 2), 1), ("qwen2", (1, 1), 1)],
)
def test_forward_matches_dense_reference(tiny_tokenizer, arch, windows, summaries):
    C = 4
    base, model = ksa_tiny(tiny_tokenizer, arch, windows=windows, summaries=summaries)
    ids = torch.randint(5, len(tiny_tokenizer), (2, 43), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model(ids).logits
        for b in range(2):
            want = dense_reference(base, model.summary_embed.weight, ids[b], C, summaries, windows)
            assert got[b].abs().max() > 0.5  # non-trivial logits
            torch.testing.assert_close(got[b], want, atol=1e-5, rtol=1e-5)


def test_huge_windows_without_summaries_equal_plain_model(tiny_tokenizer):
    base, model = ksa_tiny(tiny_tokenizer, "qwen3", windows=(10**6, 10**6), summaries_visible=False)
    ids = torch.randint(5, len(tiny_tokenizer), (2, 37))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids).logits, atol=1e-5, rtol=1e-5)
        # and the teacher path (ksa=False) is the plain model for any windows
        torch.testing.assert_close(model(ids, ksa=False).logits, base(ids).logits, atol=1e-5, rtol=1e-5)


def test_padding_left_and_right_match_unpadded_rows(tiny_tokenizer):
    _, model = ksa_tiny(tiny_tokenizer, "qwen3", windows=(1, 3))
    g = torch.Generator().manual_seed(5)
    lens, T, pad = [29, 17, 8], 29, tiny_tokenizer.pad_token_id
    rows = [torch.randint(5, len(tiny_tokenizer), (n,), generator=g) for n in lens]
    with torch.no_grad():
        alone = [model(r[None]).logits[0] for r in rows]
        for side in ("left", "right"):
            ids = torch.full((3, T), pad)
            mask = torch.zeros(3, T, dtype=torch.long)
            for b, r in enumerate(rows):
                sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
                ids[b, sl], mask[b, sl] = r, 1
            out = model(ids, attention_mask=mask).logits
            for b, r in enumerate(rows):
                sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
                torch.testing.assert_close(out[b, sl], alone[b], atol=1e-5, rtol=1e-5)


def test_right_padding_tokens_do_not_change_earlier_logits(tiny_tokenizer):
    _, model = ksa_tiny(tiny_tokenizer, "llama", windows=(1, 1))
    ids = torch.randint(5, len(tiny_tokenizer), (1, 30))
    with torch.no_grad():
        full = model(ids).logits
        torch.testing.assert_close(model(ids[:, :21]).logits, full[:, :21], atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    _, model = ksa_tiny(tiny_tokenizer, "qwen3", windows=(2, 5), summary_qkv=True)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "KSAQwen3ForCausalLM"
    assert loaded.config.ksa_windows == [2, 5] and loaded.config.ksa_chunk == 4
    ids = torch.randint(5, len(tiny_tokenizer), (2, 26))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-6, rtol=1e-6)


def test_summary_qkv_starts_equal_then_diverges(tiny_tokenizer):
    base, shared = ksa_tiny(tiny_tokenizer, "qwen3", windows=(1, 2))
    _, split = ksa_tiny(tiny_tokenizer, "qwen3", windows=(1, 2), summary_qkv=True)
    ids = torch.randint(5, len(tiny_tokenizer), (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(split(ids).logits, shared(ids).logits, atol=1e-5, rtol=1e-5)
        split.model.layers[0].self_attn.summary_v_proj.weight.add_(0.3 * torch.randn(split.model.layers[0].self_attn.summary_v_proj.weight.shape))
        assert (split(ids).logits - shared(ids).logits).abs().max() > 1e-3


def test_training_step_decreases_loss(tiny_tokenizer):
    _, model = ksa_tiny(tiny_tokenizer, "qwen3", windows=(1, 3))
    model.train()
    ids = torch.randint(5, len(tiny_tokenizer), (2, 32), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        assert model.summary_embed.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_window_patterns():
    assert parse_window_pattern("([128]*3+[16768])*9") == ([128] * 3 + [16768]) * 9
    assert parse_window_pattern("[4, 4, 1000]") == [4, 4, 1000]
    assert parse_window_pattern(" 64 ") == 64
    assert ksa.resolve_windows(7, 3) == [7, 7, 7]
    assert ksa.resolve_windows("[2]*2+[9]", 3) == [2, 2, 9]
    for bad in ("__import__('os')", "[1]*", "([1]", "1+2", "[1]*x", "[0]"):
        with pytest.raises(KSAConfigError):
            ksa.resolve_windows(bad, 1)
    with pytest.raises(KSAConfigError, match="model has 4"):
        ksa.resolve_windows("[1]*3", 4)
    with pytest.raises(KSAConfigError):
        ksa.KSAConfig(impl="cuda")


def test_flex_kernel_forward_matches_reference(tiny_tokenizer):
    _, model = ksa_tiny(tiny_tokenizer, "qwen3", windows=(1, 3))
    ids = torch.randint(5, len(tiny_tokenizer), (2, 45))
    with torch.no_grad():
        want = model(ids).logits
        model.config.ksa_impl = "flex"
        torch.testing.assert_close(model(ids).logits, want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "flex"])
def test_gpu_kernels_match_reference_with_gradients(tiny_tokenizer, impl):
    _, model = ksa_tiny(tiny_tokenizer, "qwen3", windows=(2, 5))
    model = model.cuda().train()
    ids = torch.randint(5, len(tiny_tokenizer), (2, 300), device="cuda")
    grads = {}
    for name in ("reference", impl):
        model.config.ksa_impl = name
        model.zero_grad()
        out = model(ids, labels=ids)
        out.loss.backward()
        grads[name] = (out.logits.detach(), model.summary_embed.weight.grad.clone(),
                       model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    for a, b in zip(grads["reference"], grads[impl], strict=True):
        torch.testing.assert_close(b, a, atol=2e-3, rtol=2e-3)


def test_deep_copy_uses_its_own_summary_modules(tiny_tokenizer):
    """The summary hooks of a deep copy (the learner's frozen reference, a compiled copy) run the copy's
    summary projections and layernorm, not the original's: changing the original leaves the copy's
    logits alone, and the copy's gradients land in the copy."""
    import copy

    _, model = ksa_tiny(tiny_tokenizer, windows=(1, 3), summary_qkv=True, mix_coeff=0.5, summary_norm=True)
    twin = copy.deepcopy(model)
    ids = torch.randint(5, model.config.vocab_size, (1, 19), generator=torch.Generator().manual_seed(0))
    before = twin(input_ids=ids).logits.detach()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "summary_" in name and "embed" not in name:
                p.add_(1.0)
    torch.testing.assert_close(twin(input_ids=ids).logits.detach(), before)
    twin(input_ids=ids).logits.sum().backward()
    attn = twin.model.layers[0].self_attn
    assert attn.summary_q_proj.weight.grad is not None and twin.model.layers[0].summary_input_layernorm.weight.grad is not None
    assert model.model.layers[0].self_attn.summary_q_proj.weight.grad is None
