#!/usr/bin/env bash
# Set up .venv with monai-jdt and its extras, from this checkout's own files.
# A CPU build of torch is installed first when the venv has no torch, so pip does not pull a
# multi-GB CUDA build; a torch you installed yourself (e.g. a CUDA build) is kept. Where the
# torch wheel is found:
#   1. JDT_TORCH_INDEX_URL when set (an extra pip index URL);
#   2. else pip's own configured sources, when they hold the spec without asking an index
#      (a local wheel folder, as on machines with find-links set up);
#   3. else PyTorch's CPU wheel index (below). If it does not answer, pip falls back to its
#      default index, which on Linux x86-64 serves the multi-GB CUDA build: this script then
#      says so.
#   JDT_TORCH_SPEC   what to install when no torch is present (default: torch==2.13.0)
#   JDT_TORCH_INDEX_URL  an extra pip index URL for that install (the compose file reads the
#                    same variable for its image)
#   JDT_EXTRAS       extras to install (default: dev)
#   JDT_VENV         where the venv lives (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${JDT_VENV:-.venv}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
torch_spec=${JDT_TORCH_SPEC:-torch==2.13.0}
cpu_index=https://download.pytorch.org/whl/cpu
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  index=${JDT_TORCH_INDEX_URL:-}
  if [ -z "$index" ] && ! "${pip[@]}" install --dry-run --no-deps --no-index "$torch_spec" \
    >/dev/null 2>&1; then
    index=$cpu_index
  fi
  echo "bootstrap: installing torch ($torch_spec${index:+, extra index $index})" >&2
  "${pip[@]}" install ${index:+--extra-index-url "$index"} "$torch_spec"
  fresh_torch=1
fi
"${pip[@]}" install -e ".[${JDT_EXTRAS:-dev}]"
if [ -n "${fresh_torch:-}" ] &&
  "$venv/bin/python" -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
  echo "bootstrap: note: the torch installed is a CUDA build (the CPU index did not serve" \
    "$torch_spec); set JDT_TORCH_INDEX_URL to a CPU wheel index to avoid it" >&2
fi
echo "bootstrap: ready ($("$venv/bin/python" -c 'import torch, monai, monai_jdt; print("torch", torch.__version__, "monai", monai.__version__, "monai-jdt", monai_jdt.__version__)'))" >&2
