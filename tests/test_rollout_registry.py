"""The engine registry (golong/rollout/__init__.py): names, old names, what `auto` picks, the fallback
from the static engine to the loop engine, and the one engine config a recipe builds."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import golong.rollout.vllm as vllm_module
from golong.cli import app
from golong.config import RecipeError
from golong.rollout import EngineConfig, EngineError, engine_config, engine_name, make_engine, resolve_engine
from golong.rollout.loop import LoopEngine
from golong.rollout.static import StaticEngine
from tests.test_trainer import recipe, write_recipe


@pytest.mark.parametrize(("name", "engine"), [("hf", "static"), ("fast", "static"), ("plain", "loop"),
                                              ("static", "static"), ("loop", "loop"), ("vllm", "vllm")])
def test_old_and_new_names_resolve(name, engine):
    assert resolve_engine(name) == engine


def test_an_unknown_name_is_a_recipe_error_naming_the_choices():
    with pytest.raises(RecipeError, match="use static, loop, vllm or auto"):
        engine_name("turbo")
    assert issubclass(EngineError, RecipeError)


@pytest.mark.parametrize(("vllm", "gpu", "ksa", "engine"), [
    (True, True, False, "vllm"),  # vLLM installed, a GPU: vLLM
    (True, False, False, "static"),  # no GPU
    (False, True, False, "static"),  # vLLM not installed
    (True, True, True, "static"),  # a KSA policy never goes to vLLM
])
def test_auto_picks_vllm_only_where_it_can_serve_the_policy(monkeypatch, vllm, gpu, ksa, engine):
    monkeypatch.setattr(vllm_module, "vllm_available", lambda: vllm)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert resolve_engine("auto", ksa=ksa) == engine
    assert EngineConfig("auto", ksa=ksa).resolved == engine


def test_old_names_build_the_engines_they_always_built(tiny_tokenizer):
    from tests.tiny import build_model

    model = build_model(tiny_tokenizer)
    for name, cls in (("hf", StaticEngine), ("fast", StaticEngine), ("static", StaticEngine),
                      ("plain", LoopEngine), ("loop", LoopEngine)):
        assert type(make_engine(EngineConfig(name, batch_size=4), model, tiny_tokenizer)) is cls


def test_static_falls_back_to_the_loop_for_a_model_it_cannot_run(tiny_tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1)
    model = MistralForCausalLM(cfg)
    with pytest.raises(ValueError, match="mistral"):
        StaticEngine(model, tiny_tokenizer)
    assert type(make_engine(EngineConfig("static"), model, tiny_tokenizer)) is LoopEngine


def test_a_recipe_gives_one_engine_config(tiny_model_dir, tmp_path):
    r = recipe(tiny_model_dir, tmp_path, rollout__engine="hf", rollout__kv_budget_gb=0.5)
    cfg = engine_config(r, device="cpu")
    assert (cfg.name, cfg.resolved, cfg.ksa) == ("hf", "static", False)
    assert (cfg.batch_size, cfg.max_len, cfg.kv_budget_gb, cfg.device) == (8, 160 + 8, 0.5, "cpu")
    assert (cfg.dtype, cfg.seed) == (r.model.dtype, r.trainer.seed)
    assert engine_config(recipe(tiny_model_dir, tmp_path, model__ksa={"chunk": 4})).ksa


def test_dry_run_says_which_engine_a_name_builds(tiny_model_dir, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "o")
    res = CliRunner().invoke(app, ["train", path, "rollout.engine=plain", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "rollout.engine plain builds the loop engine" in res.output
