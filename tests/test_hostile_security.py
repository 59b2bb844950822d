"""Nothing from data, model folders or model output is executed: no pickle/eval on them, remote model
code off unless the recipe turns it on, task plug-ins only from paths the user names."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import tasks
from golong.config import validate_recipe

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["golong", "rewards", "tasks", "ksa"]

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("executed")
from transformers import Qwen3Config, Qwen3ForCausalLM
class EvilConfig(Qwen3Config):
    model_type = "evil"
class EvilModel(Qwen3ForCausalLM):
    config_class = EvilConfig
"""


def source_lines():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                yield f"{path.relative_to(ROOT)}:{n}", code


def test_no_unsafe_deserialisation_or_eval_in_the_sources():
    """torch.load always with weights_only=True; no pickle/marshal/eval/exec (model.eval() is fine)."""
    bad = []
    for where, code in source_lines():
        if "torch.load(" in code and "weights_only=True" not in code:
            bad.append((where, code.strip()))
        if re.search(r"\b(pickle|marshal|dill|cloudpickle)\.loads?\(|(?<![.\w])(eval|exec)\(", code):
            bad.append((where, code.strip()))
        if "trust_remote_code=True" in code:
            bad.append((where, code.strip()))
    assert bad == []


def evil_model_folder(model_dir: Path, tmp_path: Path, model_type: str) -> tuple[Path, Path]:
    folder = tmp_path / "evil-model"
    shutil.copytree(model_dir, folder)
    marker = tmp_path / "remote-code-ran"
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_auto_map_code_in_a_model_folder_is_not_run_by_default(tiny_model_dir, tmp_path):
    from golong.models import ModelLoadError, load_policy

    recipe = lambda folder: validate_recipe({"model": {"path": str(folder)},  # noqa: E731
                                             "data": {"sources": [{"generate": "all"}]}})
    # A known architecture with an auto_map: loads as the plain architecture, the .py is never run.
    folder, marker = evil_model_folder(tiny_model_dir, tmp_path / "a", "qwen3")
    assert recipe(folder).model.trust_remote_code is False
    model, _ = load_policy(recipe(folder).model)
    assert type(model).__name__ == "Qwen3ForCausalLM" and not marker.exists()
    # An architecture only the remote code defines: a one-line error, still nothing run.
    folder, marker = evil_model_folder(tiny_model_dir, tmp_path / "b", "evil")
    with pytest.raises(ModelLoadError) as e:
        load_policy(recipe(folder).model)
    assert "\n" not in str(e.value) and not marker.exists()


def test_rows_cannot_load_task_plugins(tmp_path):
    marker = tmp_path / "plugin-ran"
    plugin = tmp_path / "evil_task.py"
    plugin.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n")
    row = tasks.get_task("precise_retrieval").generate(1, 100, seed=0)[0]
    for name in (f"{plugin}:Evil", str(plugin), "evil_task"):
        hostile = {**row, "extra_info": {**row["extra_info"], "task": name}}
        assert tasks.task_for_row(hostile).name == "precise_retrieval"
    assert not marker.exists()
    with pytest.raises(tasks.TaskError, match="defines no 'Evil'"):  # the user naming the file does run it
        tasks.load_task_spec(f"{plugin}:Evil")
    assert marker.exists()
