"""bench/train_gpu.py: the real Trainer step by step, per phase. The smoke mode runs on the CPU in the
default suite; the GPU test (-m gpu) runs three steps at the GPU recipe's settings (compiled layers,
optimizer-held float32 masters, shared prompts) with prompts of different lengths and bounds the step
time and the number of compiled graphs; a slow CPU test runs the same bounds logic with compilation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_gpu():
    spec = importlib.util.spec_from_file_location("golong_bench_train_gpu", ROOT / "bench" / "train_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_run(record: dict, *, first_s: float, step_s: float, graphs: int, growth: int) -> None:
    """A configuration finished its steps within the bounds: first step (compilation included) and
    later steps under their time limits; compiled graphs under `graphs` after the first step and
    growing by at most `growth` over the later ones (the run settles into a few shapes)."""
    steps = record["steps"]
    assert record["status"] == "ok", record["status"]
    assert steps[0]["step_time"] <= first_s, steps[0]
    assert all(s["step_time"] <= step_s for s in steps[1:]), [s["step_time"] for s in steps]
    counts = [s["compiled_graphs"] for s in steps]
    assert 1 <= counts[-1] <= graphs, counts  # compiled at all (a graph break can leave layers eager), not per length
    assert counts[-1] - counts[0] <= growth, counts
    assert sum(s.get("reward_errors", 0) for s in steps) == 0, "a reward function failed (missing package?)"


def test_smoke_runs_the_trainer_and_reports_every_phase(train_gpu, tmp_path):
    out = tmp_path / "train.json"
    results = train_gpu.main(["--smoke", "--profile-learner", "2", "--out", str(out)])
    assert json.loads(out.read_text())["configs"] == json.loads(json.dumps(results["configs"]))
    (record,) = results["configs"].values()
    assert record["status"] == "ok" and len(record["steps"]) == 3
    assert "in_flight" not in record  # a step's rollout record (for a step cut off mid-learner) goes when it ends
    settings = record["settings"]
    sequences = settings["group"] * settings["prompts"]
    for s in record["steps"]:
        assert s["prefill_s"] > 0 and s["decode_s"] > 0 and s["train_time"] > 0
        assert s["prefills"] == settings["prompts"]  # one prefill per prompt, its group copies the K/V
        assert 0 < s["response_tokens"] <= sequences * settings["new"]
        # shared prompts: each prompt goes through the model once, not G times; padding under its bound
        prompts = s["tokens"] - s["response_tokens"]
        assert s["packed_tokens"] == pytest.approx(prompts / settings["group"] + s["response_tokens"])
        assert 0 <= s["pad_tokens"] < s["packed_tokens"] / 8 + 128 * settings["prompts"]  # per row: < max(12.5%, 128)
        assert s["mfu"] > 0 and s["decode_floor_s"] > 0 and s["prefill_floor_s"] > 0
    summary = record["summary"]
    assert summary["steps"] == 3 and summary["first_step_s"] == record["steps"][0]["step_time"]
    assert summary["decode_over_floor"] > 1 and summary["compiled_graphs"] == 0  # eager: nothing compiled
    assert summary["reward_errors"] == 0  # every reward function ran (9 tasks; a missing package shows here)
    assert all(s[k] == 0 for s in record["steps"] for k in train_gpu.compile_counters())  # eager: no compile work
    # step 2's learner profiled (CPU ops here), and left out of the medians
    assert [s["profiled"] for s in record["steps"]] == [0.0, 1.0, 0.0] and summary["steady_steps"] == 1
    profile = record["learner_profile"]
    assert profile["on"] == "cpu" and 0 < profile["busy_s"] and profile["top"][0]["ms"] > 0
    assert any("mm" in r["op"] or "linear" in r["op"] for r in profile["top"])  # the model's matmuls are there


def test_stop_every_ends_responses_at_their_own_lengths(train_gpu, tmp_path):
    """--stop-every N: the random model's responses end at stop tokens (generation_config eos_token_id) after
    ~N tokens, at lengths that differ, instead of all running to NEW."""
    results = train_gpu.main(["--smoke", "--stop-every", "3", "--out", str(tmp_path / "r.json")])
    (record,) = results["configs"].values()
    settings = record["settings"]
    full = settings["group"] * settings["prompts"] * settings["new"]
    assert record["status"] == "ok"
    assert all(0 < s["response_tokens"] < full for s in record["steps"]), [s["response_tokens"] for s in record["steps"]]


def test_over_budget_records_where_the_step_was(tmp_path):
    """A configuration whose budget runs out mid-step exits 124 and leaves its status and the main
    thread's frames in golong's code (here: the setup, under a budget too short to finish it)."""
    import subprocess
    import sys

    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "train_gpu.py"), "tiny:96:2x2:8:eager", "--device", "cpu",
                           "--budget-s", "0.3", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 124, proc.stderr[-2000:]
    (record,) = json.loads(out.read_text())["configs"].values()
    assert record["status"] == "over budget: step 1 unfinished at 0 s" and record["steps"] == []
    assert record["stuck_at"] and any(line.startswith(("golong/", "bench/")) for line in record["stuck_at"])
    assert "  at:" in proc.stdout


def test_decode_floor_bandwidth_by_device(train_gpu):
    assert train_gpu.hbm_bytes_per_s("NVIDIA H100 80GB HBM3") == 3.35e12
    assert train_gpu.hbm_bytes_per_s("NVIDIA H200") == train_gpu.hbm_bytes_per_s("") == 4.8e12


def test_configuration_specs(train_gpu):
    c = train_gpu.parse_config("1.7b:2k,32k:8x2:2048:noshare")
    assert (c["prompt_lens"], c["group"], c["prompts"], c["new"]) == ([2048, 32768], 8, 2, 2048)
    assert c["compile"] and not c["share"] and not c["ksa"]
    ksa = train_gpu.parse_config("0.6b:8k:8x4:256:ksa")
    assert ksa["ksa"] and ksa["compile"] and ksa["share"]  # KSA policies at the same best settings
    with pytest.raises(SystemExit, match="unknown flags"):
        train_gpu.parse_config("0.6b:8k:8x4:256:fast")


def test_steady_medians_leave_out_steps_that_compiled(train_gpu):
    """A step that met a new length bucket compiled; its time is not steady state."""
    keys = ("step_time", "rollout_time", "prefill_s", "decode_s", "decode_floor_s", "prefill_floor_s", "train_time",
            "sync_time", "tokens_per_s", "mfu", "peak_mem_gib", "packed_tokens", "pad_tokens")
    steps = [dict(dict.fromkeys(keys, 1.0), step_time=t, compiled_graphs=g)
             for t, g in ((60.0, 4), (20.0, 5), (5.0, 5), (21.0, 6), (6.0, 6), (7.0, 6))]
    out = train_gpu.summarize(steps)
    assert (out["first_step_s"], out["step_time"], out["steady_steps"], out["compiled_graphs"]) == (60.0, 6.0, 3, 6)
    busy = train_gpu.summarize([dict(s, compiled_graphs=i) for i, s in enumerate(steps[:3])])
    assert (busy["step_time"], busy["steady_steps"]) == (12.5, 0)  # every later step compiled: all of them


def test_learner_flops_count_shared_prompts_once(train_gpu):
    shape = train_gpu.SHAPES["tiny"]
    layers, qd = shape["num_hidden_layers"], shape["num_attention_heads"] * shape["head_dim"]
    samples = [(("a", 10), 3), (("a", 10), 5)]
    shared = train_gpu.learner_flops("tiny", samples, share=True)
    plain = train_gpu.learner_flops("tiny", samples, share=False)
    # the same response tokens; the unshared row runs the prompt twice and its tokens attend more pairs
    pairs_shared = 55 + (3 * 10 + 6) + (5 * 10 + 15)
    pairs_plain = 13 * 14 // 2 + 15 * 16 // 2
    per_token = (plain - shared - 12 * layers * qd * (pairs_plain - pairs_shared)) / 10
    assert per_token > 0 and per_token == pytest.approx(6 * train_gpu.model_params("tiny"))


def test_ksa_flops_follow_the_mask(train_gpu):
    """ksa_pairs against the KSA mask itself (ksa.mask.dense_mask summed), a full layer and a windowed one,
    whole and split where a response would continue its prompt."""
    from ksa.mask import dense_mask

    n = 75  # 9 full chunks and 3 tokens
    for window, arg in ((3, 3), (10**4, None)):
        want = int(dense_mask(n, chunk=8, summaries=1, window=window).sum())
        assert train_gpu.ksa_pairs(0, n, arg) == want
        assert train_gpu.ksa_pairs(0, 37, arg) + train_gpu.ksa_pairs(37, n, arg) == want
    samples = [(("a", 4000), 100)] * 4
    full, ksa = (train_gpu.learner_flops("tiny", samples, True, ksa=k) for k in (False, True))
    assert ksa < full  # at 4K the windowed layers attend far fewer pairs than they add summary slots


@pytest.mark.slow
def test_compiled_steps_with_prompts_of_different_lengths_settle_on_cpu(train_gpu, tmp_path):
    """The GPU test's logic on the CPU: compiled layers (inductor), shared prompts, prompt lengths from
    two data sources; compiled graphs stop growing after the first step. (Without activation
    checkpointing: on the CPU machine's transformers 5.2x a checkpointed layer graph-breaks inside the
    checkpoint and runs eagerly; the GPU machine's 5.17 compiles it.)"""
    results = train_gpu.main(["tiny:96,200:2x3:8:compile", "--device", "cpu", "--steps", "3", "--budget-s", "900",
                              "--set", "model.gradient_checkpointing=false", "--out", str(tmp_path / "r.json")])
    (record,) = results["configs"].values()
    check_run(record, first_s=600, step_s=120, graphs=12, growth=4)
    first = record["steps"][0]  # the first step's compiles are on record: seconds, and inductor's cache lookups
    assert first["compile_s"] > 0 and first["fx_cache_hit"] + first["fx_cache_miss"] + first["fx_cache_bypass"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_three_steps_at_the_gpu_recipe_settings(train_gpu, tmp_path):
    """0.6B shape, prompts of 3K and 6K tokens (two data sources), G=8 x 4, 128 new tokens, compiled
    layers, optimizer-held masters, shared prompts: the first step (compilation included) within
    150 s, later steps within 30 s (a new bucket length compiles one more FlexAttention kernel);
    compiled graphs: the layers' pieces around the attention call (static, then dynamic in the
    length: ~12 on the CPU) plus one FlexAttention kernel per bucket length, so at most 40, and at
    most 8 new ones after the first step (new buckets only)."""
    results = train_gpu.main(["0.6b:3k,6k:8x4:128", "--steps", "3", "--budget-s", "400",
                              "--out", str(tmp_path / "r.json")])
    (record,) = results["configs"].values()
    check_run(record, first_s=150, step_s=30, graphs=40, growth=8)
