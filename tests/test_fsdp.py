"""Several learner ranks (FSDP2 over gloo, on CPU) train exactly like one process on the same batch.

Each case launches `python -m tests.fsdp_check` twice on the tiny model: once as one plain process
(no torch.distributed: the ordinary Learner) and once as 2 ranks under torchrun; both run train steps
on the same synthetic batch (lengths 6-46 tokens, advantages of both signs) and write loss, grad-norm
and the gathered full weights. The batches are chosen so the ranks get different numbers of
micro-batches (one rank runs idle ones) or one rank gets no sample at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from golong.distributed import split_by_tokens
from golong.packing import plan_micro_batches
from tests.fsdp_check import synthetic_batch

ROOT = Path(__file__).resolve().parents[1]

KEYS = ("loss", "pg_loss", "kl", "entropy", "clip_frac", "approx_kl", "grad_norm", "drift", "drift_kl")


def _launch(model_dir: Path, out: Path, nproc: int, *extra: str, device: str = "cpu") -> tuple[dict, dict[str, torch.Tensor]]:
    cmd = [sys.executable, "-m", "tests.fsdp_check", "--nproc", str(nproc), "--model", str(model_dir),
           "--out", str(out), "--device", device, "--save-weights", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHELASTIC_ERROR_FILE": ""}
    run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(out.read_text()), torch.load(out.with_suffix(".pt"))


def _compare(one: tuple[dict, dict], two: tuple[dict, dict], tol: float = 1e-5) -> None:
    (r1, w1), (r2, w2) = one, two
    assert r1["world"] == 1 and r2["world"] == 2
    assert len(r1["metrics"]) == len(r2["metrics"]) == 2
    for m1, m2 in zip(r1["metrics"], r2["metrics"], strict=True):
        assert set(m1) == set(m2)
        for k in KEYS:
            if k in m1:
                assert m2[k] == pytest.approx(m1[k], abs=tol, rel=tol), k
    assert sorted(w1) == sorted(w2)
    for name, w in w1.items():
        torch.testing.assert_close(w2[name], w, atol=tol, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    # the steps did change the weights (the comparison is not between two untouched models)
    init = _initial_weights()
    moved = any((w1[k] - init[k]).abs().max() > 1e-4 for k in w1 if k in init)
    assert moved


_INIT: dict[str, torch.Tensor] = {}


def _initial_weights() -> dict[str, torch.Tensor]:
    return _INIT


def _shares(seed: int, n: int, budget: int = 40) -> list[int]:
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in synthetic_batch(seed, n, 500)]
    return [len(plan_micro_batches([lengths[i] for i in share], budget)) for share in split_by_tokens(lengths, 2)]


def test_split_by_tokens_balances_and_covers():
    lengths = [50, 10, 40, 30, 20, 5]
    shares = split_by_tokens(lengths, 2)
    assert sorted(i for s in shares for i in s) == list(range(6))
    # 50 -> r0 (50); 40 -> r1 (40); 30 -> r1 (70); 20 -> r0 (70); 10 -> r0 on the tie (80); 5 -> r1 (75)
    assert shares == [[0, 1, 4], [2, 3, 5]]
    assert [sum(lengths[i] for i in s) for s in shares] == [80, 75]
    assert split_by_tokens([7], 3) == [[0], [], []]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    from safetensors.torch import load_file

    _INIT.clear()
    _INIT.update({k: v.float() for k, v in load_file(str(tiny_model_dir / "model.safetensors")).items()})
    return tiny_model_dir


def test_two_ranks_match_one_token_mean_kl_two_updates(model_dir, tmp_path):
    """token-mean, KL to a (sharded) reference, 2 optimizer passes per batch, uneven micro-batch counts;
    plus a sharded checkpoint saved, loaded into fresh ranks and stepped again identically."""
    assert len(set(_shares(1, 7))) > 1  # one rank has more micro-batches: the other runs idle ones
    args = ("--seed", "1", "--samples", "7", "--kl-coef", "0.1", "--updates", "2")
    one = _launch(model_dir, tmp_path / "one.json", 1, *args)
    two = _launch(model_dir, tmp_path / "two.json", 2, *args, "--check-resume", str(tmp_path / "ckpt"))
    _compare(one, two)
    assert two[0]["metrics"][1]["kl"] > 0  # the second step has moved away from the reference
    resume = two[0]["resume"]
    assert resume["step"] == 3 and resume["loss_diff"] < 1e-6 and resume["weight_diff"] < 1e-6
    assert (tmp_path / "ckpt" / "model" / "model.safetensors").is_file()


def test_two_ranks_match_one_with_shared_prompts(model_dir, tmp_path):
    """GRPO groups of 3 samples per prompt, packed behind one copy of the prompt on each rank."""
    args = ("--seed", "2", "--samples", "9", "--group", "3", "--micro-batch-tokens", "60")
    _compare(_launch(model_dir, tmp_path / "one.json", 1, *args), _launch(model_dir, tmp_path / "two.json", 2, *args))


def test_two_ranks_match_one_seq_mean(model_dir, tmp_path):
    """seq-mean-token-mean: the sequence count, not the token count, is summed over ranks."""
    assert len(set(_shares(1, 5))) > 1
    args = ("--seed", "1", "--samples", "5", "--loss-agg", "seq-mean-token-mean")
    _compare(_launch(model_dir, tmp_path / "one.json", 1, *args), _launch(model_dir, tmp_path / "two.json", 2, *args))


@pytest.mark.slow
def test_two_ranks_match_one_with_an_empty_rank(model_dir, tmp_path):
    """One sample for two ranks: the second rank has no sample and runs only an idle micro-batch."""
    args = ("--seed", "1", "--samples", "1")
    _compare(_launch(model_dir, tmp_path / "one.json", 1, *args), _launch(model_dir, tmp_path / "two.json", 2, *args))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_gpus_match_one_gpu(model_dir, tmp_path):
    """The same check over NCCL on a GPU pair (float32; TF32 matmuls are off by default)."""
    args = ("--seed", "1", "--samples", "7", "--kl-coef", "0.1", "--updates", "2")
    one = _launch(model_dir, tmp_path / "one.json", 1, *args, device="cuda")
    two = _launch(model_dir, tmp_path / "two.json", 2, *args, device="cuda")
    _compare(one, two, tol=1e-4)
