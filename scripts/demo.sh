#!/usr/bin/env bash
# The main job: set up, then run the tiny recipe end to end on the CPU, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
llmrecipe run --preset tiny --out "${1:-runs/demo}"
