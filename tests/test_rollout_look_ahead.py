"""The static engine's look-ahead (golong/rollout/static.py, StaticEngine.look_ahead): each decode step is
enqueued before the previous step's tokens are read, its token inputs fed from the device. Reference: the
same engine reading every step before the next. Sampled at temperature 1 with many EOS ids, so rows stop
at different steps (a stop read after the next step was enqueued drops that row's extra token).
"""

from __future__ import annotations

import pytest
import torch

from golong.rollout import engine_config, make_engine
from golong.rollout.base import SamplingParams
from golong.rollout.static import StaticEngine
from tests.test_rollout_static import make_model
from tests.test_rollout_static_ksa import LENGTHS, TEXT, ksa_model
from tests.test_trainer import recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# What the rows needed: the same whatever the schedule (each row's steps and reads, each block's prompt read
# once a step), and, when every row runs at once, the same steps. After a stop, look-ahead reads one more
# step before it admits and compacts, so with a queue a freed slot takes its next prompt a step later
# (other steps, other step shapes); "moves" is left out for that reason too.
PER_ROW = ("rows_x_steps", "kv_tokens_read", "kv_bytes_read", "prefills")
STEPS = ("decode_steps", "summary_steps", "concurrency")


def run(model, tok, prompts, share: bool, max_batch: int, look_ahead: bool, **engine_kw):
    engine = StaticEngine(model, tok, max_batch=max_batch, max_len=64, share_prefix=share, **engine_kw)
    engine.look_ahead = look_ahead
    issued = []  # whether each enqueued step followed one not yet read
    issue = engine._issue

    def spy(*args, after=None):
        issued.append(after is not None)
        return issue(*args, after=after)

    engine._issue = spy
    out = engine.generate(prompts, 4, SamplingParams(max_new_tokens=24, temperature=1.0, seed=3))
    completions = [[(c.response_ids, c.finish_reason) for c in group] for group in out]
    logprobs = [lp for group in out for c in group for lp in c.logprobs]
    return completions, logprobs, {k: engine.stats[k] for k in PER_ROW + STEPS}, issued


@pytest.mark.parametrize("policy", ["full", "ksa"])
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("max_batch", [32, 6])  # every row at once (a GRPO step), or a queue of waiting prompts
def test_look_ahead_changes_no_token(tiny_tokenizer, policy, share, max_batch):
    ids = tiny_tokenizer.encode(TEXT)
    prompts = [ids[:k] for k in LENGTHS]
    model = make_model(tiny_tokenizer, "qwen3") if policy == "full" else ksa_model(tiny_tokenizer)
    model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, *range(40, 60)]
    ahead, ahead_lps, ahead_stats, issued = run(model, tiny_tokenizer, prompts, share, max_batch, True)
    plain, plain_lps, plain_stats, plain_issued = run(model, tiny_tokenizer, prompts, share, max_batch, False)
    assert ahead == plain
    # rows may sit in other slots of other batch sizes for a step (compaction): float rounding only
    assert ahead_lps == pytest.approx(plain_lps, abs=1e-5)
    # an extra step past a stop is not counted
    assert {k: ahead_stats[k] for k in PER_ROW} == {k: plain_stats[k] for k in PER_ROW}
    if max_batch == 32:
        assert ahead_stats == plain_stats
    stops = [c[1] for group in plain for c in group]
    assert "stop" in stops and "length" in stops  # rows stop early and at the length limit
    assert not any(plain_issued)
    assert sum(issued) > len(issued) // 2  # most steps were enqueued before the one before them was read


@pytest.mark.parametrize("on", [True, False])
def test_recipe_turns_look_ahead_on_and_off(tiny_model_dir, tiny_tokenizer, tmp_path, on):
    """rollout.look_ahead (on by default) reaches the engine a recipe builds: the A/B switch for benchmarks."""
    r = recipe(tiny_model_dir, tmp_path, rollout__engine="static", **({} if on else {"rollout__look_ahead": False}))
    engine = make_engine(engine_config(r, device="cpu"), make_model(tiny_tokenizer, "qwen3"), tiny_tokenizer)
    assert isinstance(engine, StaticEngine) and engine.look_ahead is on


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("policy", ["full", "ksa"])
@pytest.mark.parametrize("compile_decode", [False, True])
def test_gpu_look_ahead_changes_no_token(tiny_tokenizer, policy, compile_decode):
    """The same on the GPU: each step a CUDA graph replay, tokens back through pinned memory, the next
    step fed from the last one's graph outputs (float32, shared prompts, the Triton decode kernel when compiled)."""
    ids = tiny_tokenizer.encode(TEXT)
    prompts = [ids[:k] for k in LENGTHS]
    model = make_model(tiny_tokenizer, "qwen3") if policy == "full" else ksa_model(tiny_tokenizer)
    model = model.to("cuda")
    model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, *range(40, 60)]
    kw = {"compile_decode": compile_decode, "decode_kernel": "triton" if compile_decode else "torch"}
    ahead, ahead_lps, ahead_stats, issued = run(model, tiny_tokenizer, prompts, True, 32, True, **kw)
    plain, plain_lps, plain_stats, _ = run(model, tiny_tokenizer, prompts, True, 32, False, **kw)
    assert ahead == plain and ahead_stats == plain_stats
    assert ahead_lps == pytest.approx(plain_lps, abs=1e-4)
    assert sum(issued) > len(issued) // 2
