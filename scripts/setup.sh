#!/usr/bin/env bash
# Create .venv and install llmrecipe with its test extras. torch==2.13.0 goes first: with it installed,
# the package's `torch>=2.6` is already satisfied and pip never resolves a (multi-GB) CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[test]'
