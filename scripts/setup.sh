#!/usr/bin/env bash
# Set up a virtual environment with blipkit and its test tools (README: "Set up").
# torch==2.13.0 first: on CPU machines pip takes the CPU build rather than a multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python -c "import blipkit, torch; print('blipkit', blipkit.__version__, 'torch', torch.__version__)"
