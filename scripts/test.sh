#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run every check CI runs: lint, format, types, tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow" -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bin=${JDT_VENV:-.venv}/bin
echo "== ruff check" && "$bin/ruff" check .
echo "== ruff format --check" && "$bin/ruff" format --check .
echo "== mypy" && "$bin/mypy"
if [ -d docker ] && compgen -G "docker/Dockerfile*" >/dev/null; then
  echo "== hadolint" && "$bin/hadolint" docker/Dockerfile*
fi
echo "== pytest" && "$bin/python" -m pytest "$@"
