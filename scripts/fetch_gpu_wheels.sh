#!/usr/bin/env bash
# Download into .whl/ (git-ignored) every wheel the project's GPU machine lacks for `golong train`
# inline and for bench/trainer_vs_trl.py (TRL), for CPython 3.12 on x86-64 Linux. The GPU machine has
# torch, transformers, peft, accelerate, numpy, pandas, pyarrow, rich, typer, PyYAML, tokenizers and
# their dependencies (shared/ENVIRONMENT.md); a device call that names `.whl` in carry installs these
# with `pip install --no-index --no-deps --target` (bench/run_h200.sh does).
#
#   scripts/fetch_gpu_wheels.sh            # then: du -sh .whl  (the script prints the total)
#
# Versions are the ones the CPU machine's tests run with. Each wheel's Requires-Dist is checked at
# the end against this set and the GPU machine's packages; anything neither provides is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.whl
mkdir -p "$DEST"
rm -f "$DEST"/*.whl

PURE=(  # pure-Python wheels (py3-none-any)
  pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5
  math-verify==0.9.0 latex2sympy2-extended==1.11.0 antlr4-python3-runtime==4.13.2
  rouge==1.0.1 six==1.17.0  # rouge imports six; python-dateutil >= 4 no longer brings it
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  pytest-timeout==2.4.0  # bench/run_h200.sh's test stages pass --timeout; the GPU machine has pytest only
)
BINARY=(pydantic-core==2.50.5 xxhash==4.1.0)  # compiled: cp312 manylinux builds
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
pip_download() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$DEST" "$@"
}
pip_download "${PURE[@]}"
pip_download "${BINARY[@]}"
# jieba (Chinese ROUGE-L segmentation) is published only as a source archive: build its pure wheel here
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" jieba==0.42.1

"$PY" - "$DEST" <<'EOF'
import re, sys, zipfile
from pathlib import Path

from packaging.requirements import Requirement

# on the GPU machine already (shared/ENVIRONMENT.md, with the dependencies those pull in)
present = {"torch", "transformers", "triton", "peft", "accelerate", "numpy", "pandas", "pyarrow", "pytest", "matplotlib",
           "rich", "typer", "pyyaml", "tokenizers", "einops", "huggingface-hub", "filelock", "fsspec", "packaging",
           "tqdm", "requests", "sympy", "jinja2", "psutil", "typing-extensions", "safetensors", "regex",
           "networkx", "python-dateutil", "httpx", "click"}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
wheels = sorted(Path(sys.argv[1]).glob("*.whl"))
have = {norm(w.name.split("-")[0]) for w in wheels}
missing = set()
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate({"python_version": "3.12", "extra": ""}):
                continue  # an extra, or for other Pythons
            name = norm(req.name)
            if name not in have and name not in present:
                missing.add(f"{name} (for {w.name.split('-')[0]})")
total = sum(w.stat().st_size for w in wheels)
for w in wheels:
    print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
print(f"{total / 2**20:7.2f} MiB  total, {len(wheels)} wheels")
if missing:
    print("not provided here nor on the GPU machine:", ", ".join(sorted(missing)))
EOF
