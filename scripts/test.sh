#!/usr/bin/env bash
# Sets up the venv if needed and runs the whole test suite on the CPU. VENV and TRANSFORMERS as in setup.sh:
#   bash scripts/test.sh                                        newest transformers pyproject.toml admits
#   VENV=.venv-lowest TRANSFORMERS=lowest bash scripts/test.sh  lowest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/pytest" -q tests "$@"
