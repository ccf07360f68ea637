#!/usr/bin/env bash
# Set up .venv with monai-jdt and its extras, from this checkout's own files.
# A CPU build of torch is installed first when the venv has no torch, so pip does not pull a
# multi-GB CUDA build; a torch you installed yourself (e.g. a CUDA build) is kept.
#   JDT_TORCH_SPEC   what to install when no torch is present (default: torch==2.13.0)
#   JDT_TORCH_INDEX  an extra pip index URL for that install (e.g. PyTorch's CPU wheel index)
#   JDT_EXTRAS       extras to install (default: dev)
#   JDT_VENV         where the venv lives (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${JDT_VENV:-.venv}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "bootstrap: installing a CPU torch (${JDT_TORCH_SPEC:-torch==2.13.0})" >&2
  "${pip[@]}" install ${JDT_TORCH_INDEX:+--extra-index-url "$JDT_TORCH_INDEX"} \
    "${JDT_TORCH_SPEC:-torch==2.13.0}"
fi
"${pip[@]}" install -e ".[${JDT_EXTRAS:-dev}]"
echo "bootstrap: ready ($("$venv/bin/python" -c 'import torch, monai, monai_jdt; print("torch", torch.__version__, "monai", monai.__version__, "monai-jdt", monai_jdt.__version__)'))" >&2
