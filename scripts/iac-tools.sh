#!/usr/bin/env bash
# Create .venv-iac (if missing) with checkov, the IaC scanner of tests/system/test_infra.py.
# checkov lives apart from .venv: it pins packaging<24 and brings boto3, numpy and more,
# which would fight the project's pins. Reinstalls only when this script changes.
# Usage: scripts/iac-tools.sh
set -euo pipefail
cd "$(dirname "$0")/.."
checkov_version="3.3.30"
python="${PYTHON:-python3}"
if [ ! -x .venv-iac/bin/python ]; then
  "$python" -m venv .venv-iac
  # Keep the tool's virtualenv out of git without touching .gitignore.
  printf '*\n' > .venv-iac/.gitignore
fi
stamp=".venv-iac/.installed-checkov-$checkov_version"
if [ ! -f "$stamp" ] || [ scripts/iac-tools.sh -nt "$stamp" ]; then
  .venv-iac/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv-iac/bin/python -m pip install --quiet --disable-pip-version-check "checkov==$checkov_version"
  touch "$stamp"
fi
