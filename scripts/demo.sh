#!/usr/bin/env bash
# The main job on embedded defaults: local IMS emulator + SQLite + the create function,
# served by functions-framework exactly as deployed; submits a seed request and reads it back.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh requirements.txt
exec .venv/bin/python scripts/demo.py "$@"
