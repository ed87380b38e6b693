#!/usr/bin/env bash
# Install the project with its test extra into .venv, then run ruff and the test suite.
# Usage: bash scripts/test.sh [--slow] [pytest args...]    (--slow also runs the long end-to-end checks)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh test
marker=(-m "not slow")
if [ "${1:-}" = "--slow" ]; then
    marker=()
    shift
fi
ruff check .
set +e
python -m pytest -q "${marker[@]}" "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$code"
