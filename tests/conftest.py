"""Shared fixtures of the test suite, and its tiers.

Tiers (markers, pyproject.toml): the default `pytest` runs the unit tests, in seconds; `e2e` marks tests that
run whole jobs (pretraining, fine-tuning, a CLI in a subprocess); `slow` marks the long checks. CI and
`bash scripts/test.sh` run the unit and e2e tiers; `bash scripts/test.sh --slow` adds the slow ones.
Tests import the helpers as `tests.<module>` (pyproject.toml puts the repository root on pytest's path).
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The data cache folder holding the tiny prepared dataset of tests/pretrain_utils.py (built once)."""
    from tests.pretrain_utils import prepare_tiny

    cache_dir = tmp_path_factory.getbasetemp() / "prepared"
    prepare_tiny(cache_dir)
    return cache_dir
