"""golong.checkpointing: under checkpoint_policy save_attention an attention call the selective policy
cannot see (kept_through_recompute: the shared-prompt FlexAttention on CUDA) runs once per layer, not
again in the layer's recompute, and the gradients equal an uncheckpointed model's. Checked through a
real transformers model whose attention function goes through kept_through_recompute."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask
from transformers import AttentionInterface, Qwen3Config, Qwen3ForCausalLM
from transformers.masking_utils import AttentionMaskInterface

from golong.checkpointing import kept_through_recompute
from golong.models import enable_checkpointing

IMPL = "golong_test_kept"
calls = {"n": 0}


def _counted_attention(q, k, v, scale):
    calls["n"] += 1
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    out = kept_through_recompute(_counted_attention, query, key, value, scaling)
    return out.transpose(1, 2).contiguous(), None


@pytest.fixture(scope="module")
def model():
    AttentionInterface.register(IMPL, _attention)
    AttentionMaskInterface.register(IMPL, lambda *args, **kwargs: None)
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
    m = Qwen3ForCausalLM(cfg).float()
    m.config._attn_implementation = IMPL
    return m


def _grads(model, policy: str | None, ids: torch.Tensor) -> tuple[int, int, dict[str, torch.Tensor]]:
    """(attention calls in forward, calls in forward + backward, gradients) of one loss."""
    model = copy.deepcopy(model)
    model.train()
    if policy is not None:
        enable_checkpointing(model, policy)
    calls["n"] = 0
    logits = model(input_ids=ids).logits
    forward = calls["n"]
    torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).backward()
    return forward, calls["n"], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_kept_call_runs_once_and_gradients_equal_an_uncheckpointed_model(model):
    ids = torch.randint(0, 64, (1, 24), generator=torch.Generator().manual_seed(1))
    layers = model.config.num_hidden_layers
    plain = _grads(model, None, ids)
    kept = _grads(model, "save_attention", ids)
    full = _grads(model, "full", ids)
    assert plain[:2] == (layers, layers)
    assert kept[:2] == (layers, layers)  # the recompute returned the recorded outputs
    assert full[:2] == (layers, 2 * layers)  # policy full: the whole layer again, attention included
    assert plain[2].keys() == kept[2].keys() == full[2].keys()
    for name, g in plain[2].items():
        torch.testing.assert_close(kept[2][name], g, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(full[2][name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_kept_call_outside_a_checkpoint_or_without_grad_is_a_plain_call(model):
    ids = torch.arange(16)[None]
    m = copy.deepcopy(model)
    enable_checkpointing(m, "save_attention")
    m.train()
    calls["n"] = 0
    with torch.no_grad():
        m(input_ids=ids)
    assert calls["n"] == m.config.num_hidden_layers
    assert kept_through_recompute(lambda x: x + 1, torch.ones(2)).tolist() == [2.0, 2.0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_shared_prompt_flex_attention_runs_once_under_save_attention(tiny_model_dir, monkeypatch):
    """On CUDA a shared-prompt row's attention is the compiled FlexAttention (a BlockMask, called
    between the layers' graphs). Under save_attention it runs once per layer in forward + backward,
    and log-probs and gradients equal the uncheckpointed model's (float32)."""
    import random

    from transformers import AutoModelForCausalLM

    import golong.packing
    from golong.packing import bucket_length, pack_shared
    from tests.test_packing_buckets import _random_units, logprobs_and_grads

    real = golong.packing.flex_between_graphs
    count = {"n": 0}

    def counted(*args):
        count["n"] += 1
        return real(*args)

    monkeypatch.setattr(golong.packing, "flex_between_graphs", counted)
    units = _random_units(random.Random(5), vocab=100)
    row = pack_shared(units, pad_to=bucket_length(pack_shared(units).input_ids.shape[1]))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).cuda()
    results = {}
    for policy in (None, "save_attention"):
        model = copy.deepcopy(base)
        model.train()
        if policy:
            enable_checkpointing(model, policy)
        count["n"] = 0
        results[policy] = logprobs_and_grads(model, row)
        assert count["n"] == model.config.num_hidden_layers, policy
    torch.testing.assert_close(results["save_attention"][0], results[None][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results["save_attention"][1], results[None][1], atol=1e-5, rtol=1e-4)


def test_ksa_shared_flex_attention_runs_once_under_save_attention(tiny_tokenizer, monkeypatch):
    """A KSA policy's shared row with BlockMasks (the CUDA path) calls its FlexAttention through the
    trainer's attention_call (kept_through_recompute): under save_attention once per layer in forward +
    backward, gradients equal the uncheckpointed model's; without it the recompute runs it again. On the
    CPU FlexAttention has no backward, so each call runs the BlockMask's rule as a dense mask through SDPA."""
    import ksa.modeling
    import ksa.shared
    from tests.test_ksa_model import ksa_tiny
    from tests.test_ksa_shared import _groups

    count = {"n": 0}

    def dense_flex(q, k, v, block_mask, scale, gqa):
        count["n"] += 1
        mask = create_mask(block_mask.mask_mod, 1, 1, q.shape[2], k.shape[2], device=q.device)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)

    real_mask = ksa.shared.shared_mask
    monkeypatch.setattr(ksa.modeling, "shared_mask", lambda *args, **kw: real_mask(*args, **kw, block=True))
    monkeypatch.setattr(ksa.shared, "flex_between_graphs", dense_flex)  # the trainer's call
    monkeypatch.setattr(ksa.shared, "run_flex", lambda q, k, v, block_mask, scale, between_graphs=False:
                        dense_flex(q, k, v, block_mask, scale, True))  # without it
    _, base = ksa_tiny(tiny_tokenizer, windows=(2, 1000, 2), chunk=4)
    units = [(13, [3, 11, 6]), (8, [5, 9])]
    groups = _groups(units, base.config.vocab_size, seed=3)
    ids = torch.tensor([t for prompt, responses in groups for t in prompt + [x for r in responses for x in r]])
    layers = base.config.num_hidden_layers
    results = {}
    for policy, call in ((None, kept_through_recompute), ("save_attention", kept_through_recompute), ("save_attention", None)):
        model = copy.deepcopy(base).train()
        if policy:
            enable_checkpointing(model, policy)
        count["n"] = 0
        hidden = model.shared_prompt_hidden(ids, units, attention_call=call)
        (hidden * torch.linspace(-1, 1, hidden.numel()).view_as(hidden)).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results[policy, call is not None] = (count["n"], hidden.detach(), grads)
    plain, kept, unkept = results[None, True], results["save_attention", True], results["save_attention", False]
    assert (plain[0], kept[0], unkept[0]) == (layers, layers, 2 * layers)
    torch.testing.assert_close(kept[1], plain[1])
    assert kept[2].keys() == plain[2].keys()
    for name, g in plain[2].items():
        torch.testing.assert_close(kept[2][name], g, rtol=1e-5, atol=1e-6, msg=name)
    # the trainer's log-probs pass the call: one per layer through forward and backward
    from golong.packing import pack_shared, packed_logprobs

    model = copy.deepcopy(base).train()
    enable_checkpointing(model, "save_attention")
    count["n"] = 0
    torch.cat(packed_logprobs(model, pack_shared(groups))[0]).sum().backward()
    assert count["n"] == layers
