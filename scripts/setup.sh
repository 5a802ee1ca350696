#!/usr/bin/env bash
# Creates .venv with the CPU build of torch (installed first: a bare `torch` pulls a multi-GB CUDA build)
# and this package with its extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[test,triton,demo]"
