"""compile_decode: the static engine's decode layers through one torch.compile'd function (inductor on
the CPU here), against the same engine uncompiled and transformers' generate.

References computed another way: greedy tokens by `model.generate` one prompt at a time and by the
uncompiled layer loop (StaticEngine._layers with its own attention closures); sampled tokens by the
uncompiled engine with the same seed; a weight update by an uncompiled engine given the same update.
Compiles on 2 shared CPU cores take seconds each (one per step shape), hence the slow marks.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from golong.rollout import EngineConfig, make_engine
from golong.rollout.base import SamplingParams
from golong.rollout.static import StaticEngine, layer_weights
from tests.conftest import ENGINE_NEW as NEW
from tests.test_rollout_static import hf_greedy, make_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tokens(out):
    return [[c.response_ids for c in g] for g in out]


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("n", [1, 3])
def test_greedy_compiled_equals_uncompiled_equals_generate(stop_model, tiny_tokenizer, stop_prompts, share, n):
    """5 stop_prompts of 3-12 tokens, G = n, 4 slots (continuous batching, compaction: several batch buckets)."""
    model, refs = stop_model
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0)
    runs = {}
    for compiled in (True, False):
        engine = StaticEngine(model, tiny_tokenizer, max_batch=4, max_len=40, share_prefix=share,
                              compile_decode=compiled)
        assert engine.compile_decode == compiled and engine.share == share
        runs[compiled] = engine.generate(stop_prompts, n, greedy)
    assert tokens(runs[True]) == tokens(runs[False]) == [[r] * n for r in refs]
    stops = [c.finish_reason for g in runs[True] for c in g]
    assert stops == [c.finish_reason for g in runs[False] for c in g] and {"stop", "length"} <= set(stops)


@pytest.mark.slow
@pytest.mark.parametrize("share", [True, False])
def test_sampled_compiled_equals_uncompiled(tiny_tokenizer, stop_prompts, share):
    """A Qwen2 (q/k/v biases), temperature 1 + top_p, same seed: the same tokens, log-probs within float
    rounding; rows stop at different steps."""
    model = make_model(tiny_tokenizer, "qwen2")
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, *range(40, 80)]  # frequent stops
    params = SamplingParams(max_new_tokens=NEW, temperature=1.0, top_p=0.95, seed=11)
    outs = [StaticEngine(model, tiny_tokenizer, max_batch=6, max_len=40, share_prefix=share,
                         compile_decode=c).generate(stop_prompts, 3, params) for c in (True, False)]
    assert tokens(outs[0]) == tokens(outs[1])
    for a, b in zip(sum(outs[0], []), sum(outs[1], []), strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)
    assert len({len(c.response_ids) for g in outs[0] for c in g}) > 1


@pytest.mark.slow
def test_weight_update_reaches_compiled_code(tiny_tokenizer, stop_prompts):
    """A Llama (no head norms). load_weights with changed weights (every parameter) changes the
    compiled engine's tokens exactly as the uncompiled engine's, with no new compile: the weights are
    inputs of the compiled code, not constants baked into it."""
    base = make_model(tiny_tokenizer, "llama")
    gen = torch.Generator().manual_seed(7)
    update = {k: v + torch.randn(v.shape, generator=gen) * 0.2 for k, v in base.state_dict().items()}
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0)
    engines = {c: StaticEngine(copy.deepcopy(base), tiny_tokenizer, max_batch=2, max_len=40, compile_decode=c)
               for c in (True, False)}
    before = {c: tokens(e.generate(stop_prompts, 1, greedy)) for c, e in engines.items()}
    graphs = compiled_graphs()
    for engine in engines.values():
        engine.load_weights(update)
    after = {c: tokens(e.generate(stop_prompts, 1, greedy)) for c, e in engines.items()}
    assert compiled_graphs() == graphs  # the same shapes: the compiled code is reused as is
    assert before[True] == before[False] and after[True] == after[False]
    assert after[True] != before[True]
    updated = copy.deepcopy(base)
    updated.load_state_dict(update)
    assert after[True] == [[hf_greedy(updated, tiny_tokenizer, p, NEW)] for p in stop_prompts]


@pytest.mark.parametrize("checkpointed", [False, True])
def test_one_compile_serves_every_layer(tiny_tokenizer, stop_prompts, checkpointed):
    """One prompt on one slot: every step has one shape, so the two layers' 15 steps (30 layer calls)
    compile one graph (and the step's sampling one more), and the next call compiles none. Also for a policy the learner checkpoints
    (the engine shares its model inline): transformers then hooks the embeddings so that their output
    requires grad even under no_grad, which made the first layer compile a second variant."""
    from golong.models import enable_checkpointing

    model = make_model(tiny_tokenizer, "qwen3")
    assert len(model.model.layers) == 2 and len(layer_weights(model.model.layers[0])) == 18
    if checkpointed:
        enable_checkpointing(model)
        with torch.no_grad():
            assert model.model.embed_tokens(torch.tensor([[1]])).requires_grad  # the hook this guards against
    engine = StaticEngine(model, tiny_tokenizer, max_batch=1, max_len=40, share_prefix=False, compile_decode=True)
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0)
    torch._dynamo.reset()  # nothing cached by earlier tests
    start = compiled_graphs()
    out = tokens(engine.generate(stop_prompts[1:2], 1, greedy))
    assert compiled_graphs() - start == 2 and engine.stats["decode_steps"] == NEW - 1  # layer, sampler
    assert tokens(engine.generate(stop_prompts[1:2], 1, greedy)) == out == [[hf_greedy(model, tiny_tokenizer, stop_prompts[1], NEW)]]
    assert compiled_graphs() - start == 2


def test_switch_from_engine_config_ksa_and_freezing(tiny_tokenizer):
    model = make_model(tiny_tokenizer, "qwen3")
    assert make_engine(EngineConfig("static", compile_decode=True), model, tiny_tokenizer).compile_decode
    assert not make_engine(EngineConfig("static"), model, tiny_tokenizer).compile_decode
    import ksa

    ksa_model = ksa.convert_model(make_model(tiny_tokenizer, "qwen3"), ksa.KSAConfig(chunk=4, windows=[1, 1000], impl="reference"))
    assert StaticEngine(ksa_model, tiny_tokenizer, compile_decode=True).compile_decode  # KSA policies too
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True), pytest.raises(ValueError, match="freezing"):
        StaticEngine(model, tiny_tokenizer, compile_decode=True)
    assert not inductor_config.freezing


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_compiled_equals_uncompiled(stop_model, tiny_tokenizer, stop_prompts):
    """Both layouts, compiled decode captured in CUDA graphs (float32 on the GPU): greedy = generate and
    = uncompiled; sampled equal to uncompiled with the same seed."""
    model, refs = stop_model
    model = copy.deepcopy(model).to("cuda")
    for share in (True, False):
        runs = {}
        for compiled in (True, False):
            engine = StaticEngine(model, tiny_tokenizer, max_batch=8, max_len=300, share_prefix=share,
                                  compile_decode=compiled)
            greedy = engine.generate(stop_prompts, 3, SamplingParams(max_new_tokens=NEW, temperature=0))
            sampled = engine.generate(stop_prompts, 3, SamplingParams(max_new_tokens=NEW, temperature=0.9, seed=5))
            assert engine.use_graphs and engine._graphs
            assert tokens(greedy) == [[r] * 3 for r in refs]
            runs[compiled] = sampled
        assert tokens(runs[True]) == tokens(runs[False])


@pytest.mark.slow
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("case", ["plain", "summary_qkv_mix", "summary_norm", "two_ring_layers"])
def test_ksa_compiled_equals_uncompiled_and_recomputation(tiny_tokenizer, case, share):
    """KSA policies (one ring layer that evicts, one full layer; chunk 4): compiled decode layers give
    the uncompiled engine's greedy tokens and those of re-running the whole KSA forward per token; with
    summary projections mixed in (mix 0.5) and a summary norm, whose weights only summary columns use.
    Sampled (temperature 1, top_p): the same tokens, log-probs within float rounding."""
    from tests.test_rollout_static_ksa import CASES, LENGTHS, TEXT, ksa_model, recompute_greedy

    model = ksa_model(tiny_tokenizer, **CASES[case])
    with torch.no_grad():  # summary norms away from the input norms they start equal to
        for name, p in model.named_parameters():
            if "summary_input_layernorm" in name:
                p.mul_(torch.linspace(0.5, 1.5, p.numel()).view(p.shape))
    ids = tiny_tokenizer.encode(TEXT)
    prompts = [ids[:k] for k in LENGTHS]
    greedy = SamplingParams(max_new_tokens=14, temperature=0)
    sampled = SamplingParams(max_new_tokens=14, temperature=1.0, top_p=0.9, seed=5)
    engines = {c: StaticEngine(model, tiny_tokenizer, max_batch=3 if not share else 4, max_len=64, compile_decode=c,
                               share_prefix=share) for c in (True, False)}
    assert engines[True].compile_decode and engines[True].ksa and engines[True].share == share
    runs = {c: e.generate(prompts, 2, greedy) for c, e in engines.items()}
    refs = [recompute_greedy(model, p, 14, {tiny_tokenizer.eos_token_id}) for p in prompts]
    assert tokens(runs[True]) == tokens(runs[False]) == [[r, r] for r in refs]
    outs = [e.generate(prompts, 2, sampled) for e in engines.values()]
    assert tokens(outs[0]) == tokens(outs[1])
    for a, b in zip(sum(outs[0], []), sum(outs[1], []), strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("share", [True, False])
def test_ksa_summaries_every_step_compiles_one_step_shape(tiny_tokenizer, share):
    """A KSA policy (one ring layer, one full layer) decoded with summary columns in every step compiles
    fewer graphs than by default, where each layer kind also compiles its variants for steps without
    summary columns (on 2026-12-06: 6 against 10 here); greedy tokens equal a whole KSA recomputation's."""
    from tests.test_rollout_static_ksa import CASES, LENGTHS, TEXT, ksa_model, recompute_greedy

    model = ksa_model(tiny_tokenizer, **CASES["summary_qkv_mix"])
    ids = tiny_tokenizer.encode(TEXT)
    prompts = [ids[:k] for k in LENGTHS]
    greedy = SamplingParams(max_new_tokens=14, temperature=0)
    counts = {}
    for every in (True, False):
        torch._dynamo.reset()
        start = compiled_graphs()
        engine = StaticEngine(model, tiny_tokenizer, max_batch=4, max_len=64, compile_decode=True, share_prefix=share,
                              ksa_summaries_every_step=every)
        out = tokens(engine.generate(prompts, 2, greedy))
        counts[every] = compiled_graphs() - start
        assert out == [[r, r] for r in (recompute_greedy(model, p, 14, {tiny_tokenizer.eos_token_id}) for p in prompts)]
    assert counts[True] < counts[False], counts


@pytest.mark.slow
def test_compiled_ksa_step_runs_no_more_eager_ops_than_full_attention(tiny_tokenizer):
    """With compile_decode a KSA step builds its masks compiled, once per layer kind: the aten ops it runs
    outside inductor's kernels (the profiler's aten events: GEMMs, the decode attention op, inputs,
    sampling) are no more than a full-attention model's of the same shape (2026-12-06, CPU: 240-271
    against 249; the masks built eagerly, 549-584)."""
    from torch.profiler import ProfilerActivity, profile

    import ksa
    from tests.tiny import build_model

    ids = tiny_tokenizer.encode(" ".join(f"record {i} key {i * 7}" for i in range(40)))
    counts = {}
    for kind in ("full", "ksa"):
        model = build_model(tiny_tokenizer, "qwen3", layers=4)
        if kind == "ksa":  # three ring layers of 4 chunks of 8, one full layer
            model = ksa.convert_model(model, ksa.KSAConfig(chunk=8, summaries=1, windows=[4, 4, 4, 100000], impl="reference"))
        model.eval().generation_config.eos_token_id = []
        engine = StaticEngine(model, tiny_tokenizer, max_batch=8, max_len=400, share_prefix=True, compile_decode=True)
        steps, run = [], engine._decode_sample

        def profiled(*args, run=run, steps=steps):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                out = run(*args)
            steps.append(sum(e.name.startswith("aten::") for e in prof.events()))
            return out

        engine._decode_sample = profiled
        engine.generate([ids[:100], ids[:117]], 4, SamplingParams(max_new_tokens=20, temperature=1.0, seed=1))
        counts[kind] = steps[-8:]  # past the compiles: one chunk's worth of steps
    assert max(counts["ksa"]) <= 1.1 * max(counts["full"]), counts


@pytest.mark.slow
def test_engine_sharing_a_compiled_learner_runs_compile_decode(tiny_model_dir, tiny_tokenizer):
    """Inline cluster, engine on the learner's own model, model.compile (each decoder layer compiled
    for the learner) and rollout.compile_decode: the decode layers compile (the cluster forces eager
    mode only for an engine that calls the learner's compiled layers), and the tokens are those of an
    uncompiled engine over the same model."""
    from golong.cluster import InlineCluster
    from golong.config import load_recipe
    from golong.rewarding import RewardPool

    recipe = load_recipe("recipes/demo.yaml", [
        f"model.path={tiny_model_dir}", "model.compile=true", "model.dtype=float32", "model.attn_implementation=null",
        "rollout.engine=static", "rollout.compile_decode=true", "cluster.mode=inline", "cluster.share_weights=true"])
    cluster = InlineCluster(recipe, rewards=RewardPool(1, mode="thread"))
    try:
        assert isinstance(cluster.engine, StaticEngine) and cluster.engine.compile_decode and cluster.shared
        prompts = [tiny_tokenizer.encode("the key of record 12 is"), tiny_tokenizer.encode("find the needle")]
        greedy = SamplingParams(max_new_tokens=NEW, temperature=0)
        torch._dynamo.reset()
        start = compiled_graphs()
        out = cluster.generate(prompts, 2, greedy)
        assert compiled_graphs() > start  # compile_decode's layer function was compiled, not run eagerly
        plain = StaticEngine(cluster.learner.model, tiny_tokenizer, max_batch=4, max_len=64).generate(prompts, 2, greedy)
        assert tokens(out) == tokens(plain)
    finally:
        cluster.shutdown()


def test_fused_layer_weights_stack_the_projections_in_place(tiny_tokenizer):
    """q/k/v (and their biases, Qwen2) and gate/up stacked in the q and gate slots, their own slots
    None, the rest the parameters themselves; a refresh into an earlier result keeps its tensors."""
    from golong.rollout.static import fused_layer_weights

    model = make_model(tiny_tokenizer, "qwen2")
    layer = model.model.layers[0]
    a, m = layer.self_attn, layer.mlp
    w = fused_layer_weights(layer)
    assert torch.equal(w[1], torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
    assert torch.equal(w[2], torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
    assert torch.equal(w[12], torch.cat([m.gate_proj.weight, m.up_proj.weight])) and w[13] is None
    assert all(w[i] is None for i in (3, 4, 5, 6, 14, 15))
    assert w[9] is a.o_proj.weight and w[16] is m.down_proj.weight and w[0] is layer.input_layernorm.weight
    with torch.no_grad():
        a.k_proj.weight.add_(1.0)
    again = fused_layer_weights(layer, w)
    assert again[1] is w[1] and again[12] is w[12]
    q_rows, k_rows = a.q_proj.weight.shape[0], a.k_proj.weight.shape[0]
    assert torch.equal(w[1][q_rows : q_rows + k_rows], a.k_proj.weight)


def test_fuse_projections_equals_separate_and_follows_weight_updates(tiny_tokenizer, stop_prompts):
    """compile_decode with q/k/v and gate/up stacked (a Qwen2: q/k/v biases) against the same compiled
    engine with separate projections: equal sampled tokens and log-probs within float rounding; after an
    in-place change of the model's weights (a colocated learner's step) still equal, and changed."""
    model = make_model(tiny_tokenizer, "qwen2")
    params = SamplingParams(max_new_tokens=NEW, temperature=1.0, top_p=0.95, seed=3)
    engines = {f: StaticEngine(model, tiny_tokenizer, max_batch=4, max_len=40, share_prefix=True, compile_decode=True,
                               fuse_projections=f) for f in (True, False)}

    def run():
        outs = {f: e.generate(stop_prompts[:2], 2, params) for f, e in engines.items()}
        assert tokens(outs[True]) == tokens(outs[False])
        for a, b in zip(sum(outs[True], []), sum(outs[False], []), strict=True):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)
        return tokens(outs[True])

    before = run()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    assert run() != before
    with pytest.raises(ValueError, match="fuse_projections needs rollout.compile_decode"):
        StaticEngine(model, tiny_tokenizer, fuse_projections=True)
    assert make_engine(EngineConfig("static", compile_decode=True, fuse_projections=True), model,
                       tiny_tokenizer).fuse_projections


@pytest.mark.slow
@pytest.mark.parametrize("case", ["summary_qkv_mix", "summary_norm"])
def test_ksa_fuse_projections_equals_separate(tiny_tokenizer, case):
    """KSA policies with summary projections mixed in (the summary columns' own q/k/v stay separate)
    or a summary norm: greedy tokens of the stacked projections equal the whole KSA recomputation's."""
    from tests.test_rollout_static_ksa import CASES, LENGTHS, TEXT, ksa_model, recompute_greedy

    model = ksa_model(tiny_tokenizer, **CASES[case])
    ids = tiny_tokenizer.encode(TEXT)
    prompts = [ids[:k] for k in LENGTHS]
    engine = StaticEngine(model, tiny_tokenizer, max_batch=4, max_len=64, compile_decode=True, fuse_projections=True)
    out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=14, temperature=0))
    refs = [recompute_greedy(model, p, 14, {tiny_tokenizer.eos_token_id}) for p in prompts]
    assert tokens(out) == [[r, r] for r in refs]


@pytest.mark.slow
@pytest.mark.parametrize("what", ["the sampler", "the KSA masks"])
def test_a_part_that_fails_to_compile_falls_back_to_the_eager_one(tiny_tokenizer, stop_prompts, what):
    """If inductor / Triton cannot build a compiled part (the sampler, as once on the H200; a KSA step's
    masks), the engine warns once and runs that part uncompiled: the same tokens as an uncompiled
    engine, no crash."""
    from tests.test_rollout_static_ksa import LENGTHS, TEXT, ksa_model

    if what == "the sampler":
        model, prompts, attr = make_model(tiny_tokenizer, "qwen3"), stop_prompts, "_sample"
    else:
        model, attr = ksa_model(tiny_tokenizer), "_biases"
        prompts = [tiny_tokenizer.encode(TEXT)[:k] for k in LENGTHS]
    params = SamplingParams(max_new_tokens=14, temperature=1.0, seed=3)
    engine = StaticEngine(model, tiny_tokenizer, max_batch=4, max_len=64, compile_decode=True)

    def broken(*args):
        raise RuntimeError("triton: incompatible types\nmore detail")

    setattr(engine, attr, broken)
    with pytest.warns(UserWarning, match=f"compiling {what} failed .RuntimeError: triton: incompatible types"):
        out = engine.generate(prompts, 2, params)
    reference = StaticEngine(model, tiny_tokenizer, max_batch=4, max_len=64).generate(prompts, 2, params)
    assert tokens(out) == tokens(reference)
