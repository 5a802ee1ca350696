#!/usr/bin/env bash
# Sets up .venv if needed and runs the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pytest -q tests "$@"
