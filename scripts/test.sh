#!/usr/bin/env bash
# Set up and run every check: lint, format, types, tests. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh requirements-dev.txt
scripts/iac-tools.sh   # checkov in its own venv: it would downgrade the project's pins
echo "== ruff check";  .venv/bin/ruff check .
echo "== ruff format"; .venv/bin/ruff format --check .
echo "== mypy";        .venv/bin/mypy
echo "== imports";     PYTHONPATH=functions .venv/bin/lint-imports --no-cache
echo "== pytest";      .venv/bin/pytest "$@"
