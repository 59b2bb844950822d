"""`golong eval` end to end on the tiny model with the real transformers engine."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from golong.cli import app
from golong.data import save_rows
from golong.evaluate import heldout_rows

runner = CliRunner()


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_eval_cli_two_models_synth_and_data_then_resume(tiny_model_dir, tmp_path):
    data = tmp_path / "eval.jsonl"
    save_rows(heldout_rows(["structured_matching"], [200], 2, seed=7), data)
    train = tmp_path / "train.jsonl"
    save_rows(heldout_rows(["structured_matching"], [200], 1, seed=7), train)  # overlaps the first eval row
    out = tmp_path / "out"
    args = ["eval", "--model", str(tiny_model_dir), "--model", str(tiny_model_dir), "--name", "base", "--name", "same",
            "--data", str(data), "--train-data", str(train), "--synth", "--lengths", "200,400", "-n", "1",
            "--tasks", "precise_retrieval,structured_matching", "--max-new-tokens", "4", "--device", "cpu",
            "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 evaluation rows overlap" in result.output
    assert "precise_retrieval" in result.output and "Δ reward same" in result.output
    lines = _lines(out / "responses.jsonl")
    # (1 data row left + 2 tasks x 2 lengths x 1 generated) x 2 models, one sample each
    assert len(lines) == 2 * 5
    assert {r["model"] for r in lines} == {"base", "same"}
    assert all(r["response_tokens"] <= 4 and r["error"] is None for r in lines)
    res = json.loads((out / "results.json").read_text())
    assert res["overlap"]["count"] == 1 and res["overlap"]["indices"] == [0] and not res["overlap"]["kept"]
    assert res["lengths"] == [200, 400]  # generated rows carry their target, the data row too
    # same weights, greedy: both "models" answer identically, so the paired difference is exactly 0
    assert res["deltas"]["same"]["all"]["delta_reward"] == 0.0
    for f in ("report.md", "reward_by_task.png", "reward_by_length.png"):
        assert (out / f).stat().st_size > 0

    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert "already done" in again.output
    assert len(_lines(out / "responses.jsonl")) == 10

    clash = runner.invoke(app, args)
    assert clash.exit_code == 1 and "error:" in clash.output and "--resume" in clash.output


def test_eval_cli_user_errors_are_one_line(tiny_model_dir, tmp_path):
    no_data = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "-o", str(tmp_path / "a")])
    assert no_data.exit_code == 1 and "error: nothing to evaluate on" in no_data.output
    bad_task = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--synth", "--lengths", "200",
                                   "--tasks", "nope", "-o", str(tmp_path / "b")])
    assert bad_task.exit_code == 1 and "unknown task 'nope'" in bad_task.output
    no_model = runner.invoke(app, ["eval", "--model", str(tmp_path / "missing"), "--synth", "--lengths", "200",
                                   "-n", "1", "--tasks", "precise_retrieval", "-o", str(tmp_path / "c")])
    assert no_model.exit_code == 1 and "error:" in no_model.output and "Traceback" not in no_model.output


def test_ksa_checkpoint_loads_and_evaluates(tiny_tokenizer, tmp_path):
    """A model saved by ksa/ loads by path (golong.models imports ksa for it) and generates in eval."""
    import ksa
    from golong.config import EvalSettings
    from golong.evaluate import evaluate, load_model
    from tests.tiny import build_model

    folder = tmp_path / "ksa-tiny"
    model = ksa.convert_model(build_model(tiny_tokenizer), ksa.KSAConfig(chunk=8, windows=[2, 64]))
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    loaded, _ = load_model(str(folder))
    assert type(loaded).__name__.startswith("KSA") and loaded.config.ksa_chunk == 8
    rows = heldout_rows(["precise_retrieval"], [160], 2, seed=1)
    res = evaluate([str(folder)], rows, engine="hf", out_dir=tmp_path / "out", plots=False,
                   settings=EvalSettings(max_new_tokens=12))
    lines = _lines(tmp_path / "out" / "responses.jsonl")
    assert len(lines) == 2 and all(r["response_tokens"] >= 1 and r["error"] is None for r in lines)
    assert res["summary"][str(folder)]["all"]["n_problems"] == 2


def test_lora_checkpoint_is_merged_onto_its_base(tiny_model_dir, tmp_path):
    """A learner checkpoint of a LoRA run holds only the adapter: it is loaded onto its base and merged."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from golong.evaluate import load_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: B != 0, so the merge changes the outputs
    ckpt = tmp_path / "learner" / "model"
    peft_model.save_pretrained(ckpt)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits
    merged, tok = load_model(str(tmp_path / "learner"))
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    assert not hasattr(merged, "peft_config") and tok is not None
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, plain, atol=1e-3)


def test_run_folder_of_a_real_checkpoint_loads(tiny_model_dir, tmp_path):
    """`--model RUN_DIR` loads the newest checkpoint the trainer wrote (checkpoint.save + Learner.save)."""
    import torch

    from golong import checkpoint
    from golong.config import AlgoConfig, ModelConfig, OptimConfig
    from golong.evaluate import load_model
    from golong.learner import Learner

    learner = Learner(ModelConfig(path=str(tiny_model_dir)), OptimConfig(), AlgoConfig(), device="cpu")
    with torch.no_grad():
        learner.model.model.norm.weight.fill_(0.5)  # "trained": differs from the base
    for step in (1, 2):
        checkpoint.save(tmp_path / "run", step, learner.save, {"mixture": {}, "metrics": []})
    model, tok = load_model(str(tmp_path / "run"))
    assert torch.equal(model.model.norm.weight, torch.full_like(model.model.norm.weight, 0.5))
    assert tok.eos_token == "<|im_end|>"
