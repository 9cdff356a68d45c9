#!/usr/bin/env bash
# Run the whole test suite and the linter (README: "Test").
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
