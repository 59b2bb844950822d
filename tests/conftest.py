import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton's interpreter must be on before anything imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """`-m gpu` tests are skipped (counted) on a machine without CUDA, instead of failing there."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tests.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Qwen3 model + tokenizer folder (random weights)."""
    from tests.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny-qwen3"), arch="qwen3")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    from tests.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), arch="llama")


@pytest.fixture(autouse=True)
def _isolated_task_registry():
    """Plug-in tasks a test loads stay registered only for that test."""
    from tasks import registry

    registry.all_tasks()  # built-ins and entry points are loaded once, before the snapshot
    saved = dict(registry._registry)
    yield
    registry._registry.clear()
    registry._registry.update(saved)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for every Ray test of the session."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_worker_niceness", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one CPU thread for a module's tests (its previous count restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ENGINE_PROMPT_LENGTHS = (3, 9, 5, 12, 7)  # stop_prompts: token counts of the engine tests' prompts
ENGINE_NEW = 16  # stop_model: new tokens of its greedy references


@pytest.fixture(scope="module")
def stop_prompts(tiny_tokenizer):
    """Prompts of 3-12 tokens for the static engine's equality tests."""
    from tests.test_rollout_static import TEXT

    ids = tiny_tokenizer.encode(TEXT * 2)
    return [ids[:k] for k in ENGINE_PROMPT_LENGTHS]


@pytest.fixture(scope="module")
def stop_model(tiny_tokenizer, stop_prompts):
    """A tiny Qwen3 (q/k head norms) whose greedy continuations of stop_prompts hit an extra EOS id at
    different steps, and those continuations by `generate` (the references)."""
    from tests.test_rollout_static import hf_greedy, make_model, set_stop_tokens

    model = make_model(tiny_tokenizer, "qwen3")
    set_stop_tokens(model, tiny_tokenizer, stop_prompts, ENGINE_NEW)
    return model, [hf_greedy(model, tiny_tokenizer, p, ENGINE_NEW) for p in stop_prompts]
