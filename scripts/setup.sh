#!/usr/bin/env bash
# Creates a venv (default .venv) with the CPU build of torch (installed first: a bare `torch` pulls a
# multi-GB CUDA build) and this package with its extras. Safe to run again.
#   VENV=DIR              the venv to make (default .venv)
#   TRANSFORMERS=lowest   transformers at the lowest minor release pyproject.toml admits (its newest patch),
#                         instead of the newest admitted release pip picks
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
spec=()
if [ "${TRANSFORMERS:-}" = lowest ]; then
    low=$(python3 -c 'import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(next(re.search(r">=([0-9.]+)", d)[1] for d in deps if d.startswith("transformers")))')
    spec=("transformers[serving]==${low}.*")
elif [ -n "${TRANSFORMERS:-}" ]; then
    echo "TRANSFORMERS must be unset or 'lowest', got '${TRANSFORMERS}'" >&2
    exit 2
fi
"$VENV/bin/pip" install -q -e ".[test,triton,demo]" "${spec[@]}"
"$VENV/bin/python" -c 'import transformers; print("transformers", transformers.__version__, "in '"$VENV"'")'
