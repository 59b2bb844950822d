"""Self-distillation: it lowers the distillation loss, resumes exactly, and saves a loadable model."""

from __future__ import annotations

import copy

import pytest
import torch

import ksa
from ksa.convert import DistillConfig, distill_loss, sample_batch, self_distill, token_stream
from tests.test_ksa_model import spiced_base


@pytest.fixture(scope="module")
def spiced_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny Qwen3 whose attention matters (weights std 0.15), so KSA starts away from the teacher."""
    path = tmp_path_factory.mktemp("spiced-qwen3")
    spiced_base(tiny_tokenizer, "qwen3", layers=2).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_summary_stage_lowers_held_out_distillation_loss(spiced_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    kcfg = ksa.KSAConfig(chunk=4, windows=[1, 100000])
    cfg = DistillConfig(steps=12, joint_steps=0, seq_len=64, batch_size=2, lr_summary=5e-2, checkpoint_every=100)
    student, history = self_distill(spiced_dir, tmp_path / "out", kcfg, cfg, progress=False)
    assert [h["stage"] for h in history] == ["summary"] * 12
    teacher = AutoModelForCausalLM.from_pretrained(spiced_dir).eval()
    fresh = ksa.convert_model(copy.deepcopy(teacher), kcfg).eval()
    # the student's non-summary weights did not move in the summary-only stage
    torch.testing.assert_close(student.model.layers[0].mlp.up_proj.weight, fresh.model.layers[0].mlp.up_proj.weight)
    ids = sample_batch(token_stream(tiny_tokenizer, None, 4000, seed=7), 4, 64, torch.Generator().manual_seed(9))
    with torch.no_grad():
        _, before = distill_loss(fresh, teacher, ids, cfg)
        _, after = distill_loss(student, teacher, ids, cfg)
    assert after["kl"] < 0.95 * before["kl"]
    assert after["loss"] < before["loss"]


def test_resume_repeats_the_same_steps_and_saved_model_generates(spiced_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kcfg = ksa.KSAConfig(chunk=4, windows=[1, 100000])
    cfg = DistillConfig(steps=6, joint_steps=2, seq_len=32, batch_size=2, lr_summary=1e-2, lr_joint=1e-3,
                        checkpoint_every=3)
    out = tmp_path / "out"
    _, full = self_distill(spiced_dir, out, kcfg, cfg, progress=False)
    assert (out / "checkpoint" / "state.pt").is_file()  # written at step 3
    _, resumed = self_distill(spiced_dir, out, kcfg, cfg, resume=True, progress=False)
    assert [h["step"] for h in resumed] == [1, 2, 3, 4, 5, 6]
    assert [h["stage"] for h in resumed] == ["summary"] * 4 + ["joint"] * 2
    for a, b in zip(full, resumed, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "KSAQwen3ForCausalLM"
    enc = tok(["key 1234 holds value", "recall"], return_tensors="pt", padding=True, padding_side="left")
    gen = model.generate(**enc, max_new_tokens=10, do_sample=False)
    assert gen.shape == (2, enc["input_ids"].shape[1] + 10)


def test_cli_convert(spiced_dir, tmp_path):
    from typer.testing import CliRunner

    from golong.cli import app

    text = tmp_path / "corpus.txt"
    text.write_text("key 4821 holds value 17. the old city market lists the first code. " * 40)
    out = tmp_path / "cli-out"
    args = ["ksa", "convert", str(spiced_dir), "-o", str(out), "--text", str(text), "--steps", "3",
            "--seq-len", "32", "--chunk", "4", "--windows", "[1]+[100000]"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / "config.json").is_file() and (out / "distill_history.json").is_file()
    bad = CliRunner().invoke(app, ["ksa", "convert", str(tmp_path / "nope"), "-o", str(out)])
    assert bad.exit_code == 1 and "not a model folder" in bad.output
    bad = CliRunner().invoke(app, [*args[:5], "--windows", "[1]*3"])
    assert bad.exit_code == 1 and "model has 2" in bad.output
