"""The learner under model.compile settles into a small fixed set of compiled graphs, for full-attention
and KSA policies with shared prompts: rows are padded to bucket lengths (on the KSA layout, text and
summary slots), compiled decoder layers are dynamic in the row length from their first call, and
FlexAttention (the GPU's shared-prompt kernel) runs between the layers' graphs, compiled once per bucket.
On the CPU the learner's shared rows take dense masks (FlexAttention has no CPU backward); the BlockMask
path is checked in forward."""

from __future__ import annotations

import random
import shutil
import warnings

import pytest
import torch

from golong.config import AlgoConfig, ModelConfig, OptimConfig
from golong.learner import Learner, Sample
from golong.models import compiled_graphs
from golong.packing import (
    TILE,
    _ksa_units,
    bucket_length,
    lays_out_every_row,
    pack,
    pack_shared,
    packed_logprobs,
    shared_attention,
)
from ksa.shared import shared_length

needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile on the CPU needs a C++ compiler"
)
KSA_HYBRID = {"chunk": 4, "windows": [2, 1000]}  # a KSA layer of 2 chunks and a full one


def _batch(rng: random.Random, step: int, vocab: int, groups: int = 2, size: int = 2) -> list[Sample]:
    """GRPO groups of varied prompt and response lengths (each group 30 to 900 tokens)."""
    samples = []
    for g in range(groups):
        prompt = [rng.randrange(5, vocab) for _ in range(rng.randint(20, 500))]
        for i in range(size):
            response = [rng.randrange(5, vocab) for _ in range(rng.randint(5, 200))]
            samples.append(Sample(prompt, response, advantage=1.0 if i % 2 else -1.0, group_id=(step, g)))
    return samples


def _slots(model, row) -> int:
    """The length the layers see: the packed row, or a KSA row's layout (text, summary and padding slots)."""
    config = model.config
    if (row.members is not None and config.model_type.startswith("ksa_")) or lays_out_every_row(model):
        return shared_length(_ksa_units(row), config.ksa_chunk, config.ksa_summaries) + row.layout_padding
    return row.input_ids.shape[1]


def test_ksa_shared_rows_are_bucketed_on_their_layout(tiny_model_dir):
    """A KSA policy's shared rows get layout padding that brings text + summary slots to the bucket
    length of that count (a multiple of FlexAttention's tile), and the padding is counted in pad_tokens."""
    learner = Learner(ModelConfig(path=str(tiny_model_dir), ksa=KSA_HYBRID), OptimConfig(micro_batch_tokens=700),
                      AlgoConfig(), device="cpu")
    rng = random.Random(1)
    rows = [row for step in range(4) for _, row in learner._rows(_batch(rng, step, 400))]
    for row in rows:
        n = shared_length(_ksa_units(row), 4, 1)
        assert row.padding == 0 and row.layout_padding == bucket_length(n) - n
        assert _slots(learner.model, row) % TILE == 0
    assert any(row.layout_padding for row in rows)
    metrics = learner.train_step(_batch(random.Random(1), 0, 400))
    first = [row for _, row in learner._rows(_batch(random.Random(1), 0, 400))]
    assert metrics["pad_tokens"] == sum(row.layout_padding for row in first)


def test_flex_ksa_policy_lays_out_its_ordinary_rows(tiny_model_dir):
    """Without shared prompts, a FlexAttention KSA policy's packed rows go on its shared layout, padded
    to a bucket length; their log-probs equal those of the reference kernel's right-padded batch."""
    learner = Learner(ModelConfig(path=str(tiny_model_dir), ksa={**KSA_HYBRID, "impl": "flex"}),
                      OptimConfig(share_prompts=False, micro_batch_tokens=700), AlgoConfig(), device="cpu")
    samples = _batch(random.Random(2), 0, 400, groups=3)
    rows = learner._rows(samples)
    assert len(rows) > 1 and all(row.members is None and _slots(learner.model, row) % TILE == 0 for _, row in rows)
    got = learner.compute_logprobs(samples)
    learner.model.config.ksa_impl = "reference"  # the padded batch through the model's own forward
    assert not lays_out_every_row(learner.model)
    for a, b in zip(got, learner.compute_logprobs(samples), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("ksa", [None, KSA_HYBRID], ids=["full", "ksa-hybrid"])
def test_compiled_learner_settles_over_many_lengths(tiny_model_dir, ksa):
    """Eight steps whose rows take at least six distinct bucket lengths: the learner's compiled graphs
    are built in the first step (one layer graph for no-grad forwards, one for training, each dynamic
    in the length; the layers share them) and not added to with new lengths, and at every step the
    compiled log-probs equal the same model's run eagerly."""
    torch._dynamo.reset()
    # (no activation checkpointing here: test_checkpointed_ksa_layers_compile_without_a_break has it)
    cfg = ModelConfig(path=str(tiny_model_dir), compile=True, ksa=ksa)
    learner = Learner(cfg, OptimConfig(lr=1e-3, micro_batch_tokens=4096), AlgoConfig(), device="cpu")
    rng = random.Random(0)
    graphs, lengths = [], set()
    for step in range(8):
        samples = _batch(rng, step, 400, groups=1 + step % 4)
        lengths.update(_slots(learner.model, row) for _, row in learner._rows(samples))
        compiled = learner.compute_logprobs(samples)
        with torch.compiler.set_stance("force_eager"):
            eager = learner.compute_logprobs(samples)
        for a, b in zip(compiled, eager, strict=True):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=0)
        graphs.append(learner.train_step(samples)["compiled_graphs"])
    assert len(lengths) >= 6, lengths
    # (+1 at most: inductor's CPU code for the backward's reductions guards on 2 L <= 4096, so a row
    # past 2,048 compiles the training graph once more; the GPU's Triton code has no such guard)
    assert graphs[0] == 2 and graphs[-1] <= 3, graphs


@pytest.fixture
def _quiet():
    with warnings.catch_warnings():  # FlexAttention's unfused CPU path warns
        warnings.simplefilter("ignore", UserWarning)
        yield


def _forward(model, row) -> torch.Tensor:
    with torch.no_grad(), shared_attention(model, row):
        return torch.cat(packed_logprobs(model, row)[0])


@needs_compiler
@pytest.mark.parametrize("ksa, shared", [
    (None, True), (KSA_HYBRID, True), ({**KSA_HYBRID, "summary_qkv": True, "mix_coeff": 0.5}, True),
    ({**KSA_HYBRID, "impl": "flex"}, False),
], ids=["full", "ksa-hybrid", "ksa-summary-qkv", "ksa-flex-unshared"])
def test_block_mask_path_compiles_once_per_bucket(tiny_model_dir, ksa, shared, monkeypatch, _quiet):
    """The GPU's path on the CPU, in forward: BlockMasks, FlexAttention between the compiled layers'
    graphs. Rows of eight lengths in a few buckets: the layers' graphs are built once, at the first
    row, and the compiled FlexAttention adds one graph per bucket (one for all layers: a KSA window is
    a tensor in its mask_mod); outputs equal the model's run eagerly. A FlexAttention KSA policy's
    ordinary packed rows (no shared prompt) take the same path (golong.packing.lays_out_every_row).
    (Layers on aot_eager and FlexAttention on aot_eager: dynamo's graph decisions without inductor's
    compile time.)"""
    from torch.nn.attention.flex_attention import flex_attention

    import golong.packing as packing
    import ksa.flex_attention as kflex
    import ksa.modeling as kmodeling
    import ksa.shared as kshared
    from golong.models import load_policy

    torch._dynamo.reset()
    monkeypatch.setattr(packing, "shared_mask", lambda row, device, block=None: packing.shared_block_mask(row, device))
    monkeypatch.setattr(kmodeling, "shared_mask", lambda layout, window, impl, visible=True, block=None:
                        kshared.shared_block_mask(layout, window, visible))
    flex = torch.compile(flex_attention, backend="aot_eager", dynamic=False)
    monkeypatch.setattr(kflex, "compiled_flex_attention", lambda mode=None: flex)
    model, _ = load_policy(ModelConfig(path=str(tiny_model_dir), ksa=ksa), device="cpu")
    model.eval()
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in (150, 171, 203, 260, 299, 333, 380, 420):
        ids = torch.randint(5, model.config.vocab_size, (n,), generator=g).tolist()
        prompt, responses = ids[: n // 2], [ids[n // 2 : 3 * n // 4], ids[3 * n // 4 :]]
        if shared:
            row = pack_shared([(prompt, responses)], pad_to=None if ksa else bucket_length(n))
        else:
            row = pack([prompt, prompt], responses)
        if ksa:
            row.layout_padding = packing.ksa_layout_padding(model, row)
        rows.append(row)
    lengths = [_slots(model, row) for row in rows]  # the row lengths the layers see: 3 or 4 buckets
    assert len(set(lengths)) >= 3 and all(n % TILE == 0 for n in lengths)
    for layer in model.model.layers:
        layer.compile(backend="aot_eager", dynamic=True)
    compiled, added = [], []
    for row in rows:
        before = compiled_graphs()
        compiled.append(_forward(model, row))
        added.append(compiled_graphs() - before)
    # the first row: the layers' pieces around the attention call and one kernel; later rows: one
    # kernel for each new bucket, nothing for a bucket seen before
    assert added[0] >= 2
    assert added[1:] == [float(n not in lengths[:i]) for i, n in enumerate(lengths) if i], (lengths, added)
    with torch.compiler.set_stance("force_eager"):
        eager = [_forward(model, row) for row in rows]
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@needs_compiler
@pytest.mark.parametrize("policy", [pytest.param("full", marks=pytest.mark.slow), "save_attention"])
def test_checkpointed_ksa_layers_compile_without_a_break(tiny_model_dir, policy):
    """A compiled, checkpointed KSA layer traces whole: no graph break, so the checkpoint is part of the
    graph, and a train step equals the eager one. A break inside a checkpointed layer ran its forward
    compiled and its recompute eagerly on the GPU, and backward failed with CheckpointError (H100,
    torch 2.11, 2026-12-06: the within-window path built its prefix order, a nonzero, inside the layer).
    Under a traced checkpoint the save_attention context must be torch's own two dispatch modes, and
    transformers 5.2x's hub-kernel wrapper (a context variable set and reset in the attention's forward)
    must not count as a side effect (golong.models.compile_layers)."""
    from torch._dynamo.utils import counters

    ksa = {"chunk": 4, "windows": [2, 1000], "impl": "triton"}  # a KSA layer and a within-window one
    rng = random.Random(0)
    samples = [Sample([rng.randrange(5, 400) for _ in range(rng.randint(30, 90))],
                      [rng.randrange(5, 400) for _ in range(rng.randint(5, 30))], advantage=1.0 - 2 * (i % 2))
               for i in range(3)]  # fmt: skip
    metrics = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        cfg = ModelConfig(path=str(tiny_model_dir), ksa=ksa, compile=compiled, gradient_checkpointing=True,
                          checkpoint_policy=policy)  # fmt: skip
        learner = Learner(cfg, OptimConfig(lr=1e-3, micro_batch_tokens=4096, share_prompts=False), AlgoConfig(), device="cpu")
        metrics[compiled] = learner.train_step(samples)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert metrics[True]["compiled_graphs"] >= 1
    for name in ("loss", "grad_norm"):
        assert metrics[True][name] == pytest.approx(metrics[False][name], rel=1e-4, abs=1e-6), name
