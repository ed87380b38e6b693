#!/usr/bin/env bash
# Install the project with its test extra into .venv, then run ruff and the test suite.
# Usage: bash scripts/test.sh [--slow] [pytest args...]
# Runs the unit and e2e tiers (the whole suite but the slow checks); --slow adds those too. A bare
# `pytest` runs the unit tier only (pyproject.toml), for a quick check while editing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh test
marker=(-m "not slow")
if [ "${1:-}" = "--slow" ]; then
    marker=(-m "e2e or not e2e")
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
