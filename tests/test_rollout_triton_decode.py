"""rollout.decode_kernel=triton: the static engine's decode attention through ksa/triton_decode.py's
split-K kernel (Triton's interpreter on the CPU) against the engine's torch path and against
references computed another way (transformers' generate; re-running the whole KSA forward per token).
Full attention and KSA layers, per-row and shared-prompt storage, eager and compiled decode layers."""

from __future__ import annotations

import pytest
import torch

from golong.rollout import EngineConfig, make_engine
from golong.rollout.base import SamplingParams
from golong.rollout.static import StaticEngine
from tests.conftest import ENGINE_NEW as NEW
from tests.test_rollout_static import make_model
from tests.test_rollout_static_ksa import CASES, LENGTHS, TEXT, ksa_model, recompute_greedy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tokens(out):
    return [[c.response_ids for c in g] for g in out]


def logprobs_close(a, b, atol=2e-5):
    for x, y in zip(sum(a, []), sum(b, []), strict=True):
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=atol, rtol=0)


@pytest.mark.parametrize("share", [True, False])
def test_full_attention_triton_equals_generate_and_torch(stop_model, tiny_tokenizer, stop_prompts, share):
    """Greedy: generate's tokens; sampled (temperature 1, no top_p: a nucleus edge would turn float
    rounding into a jump of the renormalised log-prob): the torch path's tokens and log-probs. 3 slots
    for 5 groups of 2 (continuous batching; with sharing, groups split over blocks)."""
    model, refs = stop_model
    engines = {k: StaticEngine(model, tiny_tokenizer, max_batch=3, max_len=40, share_prefix=share, decode_kernel=k)
               for k in ("triton", "torch")}
    assert engines["triton"].decode_kernel == "triton"
    assert tokens(engines["triton"].generate(stop_prompts, 2, SamplingParams(max_new_tokens=NEW, temperature=0))) \
        == [[r] * 2 for r in refs]
    sampled = SamplingParams(max_new_tokens=NEW, temperature=1.0, seed=3)
    outs = [e.generate(stop_prompts, 2, sampled) for e in engines.values()]
    assert tokens(outs[0]) == tokens(outs[1])
    logprobs_close(outs[0], outs[1])


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("case", ["plain", "two_ring_layers", pytest.param("two_summaries", marks=pytest.mark.slow),
                                  pytest.param("summaries_hidden", marks=pytest.mark.slow)])
def test_ksa_triton_equals_recomputation_and_torch(tiny_tokenizer, case, share):
    """KSA policies (ring layers that evict, one full layer, chunk 4): greedy tokens of re-running the
    whole KSA forward per token; log-probs of the torch path. The ring layers' parts (window text,
    prompt summaries, own summaries) include ones a query column sees nothing of (-inf everywhere)."""
    model = ksa_model(tiny_tokenizer, **CASES[case])
    ids = tiny_tokenizer.encode(TEXT)
    prompts = [ids[:k] for k in LENGTHS]
    greedy = SamplingParams(max_new_tokens=14, temperature=0)
    engines = {k: StaticEngine(model, tiny_tokenizer, max_batch=4, max_len=64, share_prefix=share, decode_kernel=k)
               for k in ("triton", "torch")}
    runs = {k: e.generate(prompts, 2, greedy) for k, e in engines.items()}
    refs = [recompute_greedy(model, p, 14, {tiny_tokenizer.eos_token_id}) for p in prompts]
    assert tokens(runs["triton"]) == tokens(runs["torch"]) == [[r, r] for r in refs]
    logprobs_close(runs["triton"], runs["torch"])


@pytest.mark.slow
@pytest.mark.parametrize("ksa", [False, True])
def test_compiled_decode_layers_with_the_triton_kernel(stop_model, tiny_tokenizer, stop_prompts, ksa):
    """compile_decode traces the kernel as one opaque op (ksa::decode_partials) inside the compiled
    layer: the same greedy tokens as the eager torch path, shared prompts."""
    if ksa:
        model = ksa_model(tiny_tokenizer, **CASES["summary_qkv_mix"])
        ids = tiny_tokenizer.encode(TEXT)
        prompts = [ids[:k] for k in LENGTHS]
    else:
        model, prompts = stop_model[0], stop_prompts
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    runs = [StaticEngine(model, tiny_tokenizer, max_batch=4, max_len=64, compile_decode=c, decode_kernel=k)
            .generate(prompts, 2, greedy) for c, k in ((True, "triton"), (False, "torch"))]
    assert tokens(runs[0]) == tokens(runs[1])
    logprobs_close(runs[0], runs[1], atol=1e-4)


def test_decode_kernel_from_the_recipe_and_bad_values(tiny_tokenizer):
    model = make_model(tiny_tokenizer, "llama")
    assert make_engine(EngineConfig("static", decode_kernel="triton"), model, tiny_tokenizer).decode_kernel == "triton"
    assert make_engine(EngineConfig("static"), model, tiny_tokenizer).decode_kernel == "torch"
    with pytest.raises(ValueError, match="rollout.decode_kernel='cuda': use 'torch' or 'triton'"):
        StaticEngine(model, tiny_tokenizer, decode_kernel="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_triton_decode_matches_torch(tiny_tokenizer, stop_prompts):
    """bfloat16 on the GPU, CUDA graphs, compiled decode layers: the kernel's greedy tokens agree with
    the torch path's on most rows (bf16 near-ties may part them) and its sampled log-probs stay within
    bf16 rounding of the torch path's where the tokens agree."""
    model = make_model(tiny_tokenizer, "llama").to("cuda", torch.bfloat16)
    greedy = SamplingParams(max_new_tokens=24, temperature=0)
    runs = {}
    for kernel in ("triton", "torch"):
        engine = StaticEngine(model, tiny_tokenizer, max_batch=8, max_len=300, compile_decode=True, decode_kernel=kernel)
        runs[kernel] = engine.generate(stop_prompts, 4, greedy)
        assert engine.use_graphs and engine._graphs
    rows = [(a, b) for ga, gb in zip(runs["triton"], runs["torch"], strict=True) for a, b in zip(ga, gb, strict=True)]
    same = [a.response_ids[:4] == b.response_ids[:4] for a, b in rows]
    assert sum(same) >= 0.75 * len(rows)
    for (a, b), s in zip(rows, same, strict=True):
        if s:
            torch.testing.assert_close(torch.tensor(a.logprobs[:4]), torch.tensor(b.logprobs[:4]), atol=0.1, rtol=0)


def test_decode_kernel_bench_smoke(tmp_path):
    """bench/decode_kernel.py on the CPU (interpreter, float32): both paths agree with the float32
    reference and the JSON holds a row per (keys, queries); with a second key part, one launch and one
    launch per part agree with the reference over both parts."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "decode_kernel.py"
    spec = importlib.util.spec_from_file_location("golong_bench_decode_kernel", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "dk.json"
    result = bench.main(["--device", "cpu", "--rows", "2", "--heads", "2", "--keys", "600", "--queries", "2", "4",
                   "--dim", "32", "--reps", "1", "--second-keys", "200", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["keys"], r["queries"]) for r in rows] == [(600, 2), (600, 4)] and rows == result["rows"]
    assert all(r["torch_err"] < 1e-5 and r["triton_err"] < 1e-5 and r["speedup"] > 0 for r in rows)
    assert all(r["one_launch_err"] < 1e-5 and r["two_launches_err"] < 1e-5 and r["launch_gain"] > 0 for r in rows)
