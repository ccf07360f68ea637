#!/usr/bin/env bash
# Set up .venv (scripts/bootstrap.sh, service extra) and run the scoring service on its
# embedded defaults: http://127.0.0.1:8000, OpenAPI docs at /docs. Arguments go to
# `monai-jdt serve`, e.g. `bash scripts/serve.sh --port 9000 --device cpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
JDT_EXTRAS=${JDT_EXTRAS:-service} bash scripts/bootstrap.sh
exec "${JDT_VENV:-.venv}/bin/monai-jdt" serve "$@"
