"""The tiny config's training losses against a stored reference curve (tests/data/tiny_loss_curve.json).

Every other test checks one property; this one notices any change to what a run computes: the synthetic
corpus, the tokenizer, the NSP pairs, the masking, the model, the loss, the optimizer or the learning-rate
schedule moves the curve, and the failure names the first step that moved. fp32 and one thread, so that the
only differences between machines are the last bits of the BLAS's sums. After a change that is meant to
move the curve, regenerate it and say why in the commit:

    python -m tests.test_reference_curve
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

from tests.pretrain_utils import prepare_tiny, pretrain_here, train_losses

CURVE = Path(__file__).resolve().parent / "data" / "tiny_loss_curve.json"
SETTINGS = ("train.max_steps=20", "train.mixed_precision=no", "train.save_every=0", "train.eval_every=0")
TOLERANCE = 2e-4  # relative: far above the last bits of two machines' sums, far below what a change moves

pytestmark = pytest.mark.e2e


def tiny_curve(cache_dir: Path, run_dir: Path) -> dict[int, float]:
    pretrain_here(cache_dir, run_dir, *SETTINGS)
    return train_losses(run_dir)


def first_difference(curve: dict[int, float], reference: dict[int, float]) -> str | None:
    """'step N: loss X, reference Y' for the first step off by more than TOLERANCE, or None."""
    if sorted(curve) != sorted(reference):
        return f"steps {sorted(curve)}, reference steps {sorted(reference)}"
    for step in sorted(reference):
        if abs(curve[step] - reference[step]) > TOLERANCE * abs(reference[step]):
            return f"step {step}: loss {curve[step]:.6f}, reference {reference[step]:.6f}"
    return None


def stored() -> dict[int, float]:
    return {int(k): v for k, v in json.loads(CURVE.read_text())["train_loss"].items()}


def test_the_tiny_run_follows_the_reference_curve(tiny_data, tmp_path):
    problem = first_difference(tiny_curve(tiny_data, tmp_path / "run"), stored())
    assert problem is None, f"the tiny run left its reference curve at {problem}"


@pytest.mark.parametrize(
    "change", ["data.max_predictions_per_seq=4", "optimizer.warmup_steps=3", "optimizer.schedule=constant"]
)
def test_the_curve_notices_a_change_to_masking_or_schedule(tiny_data, tmp_path, change):
    """Negative controls: fewer masked slots, one warmup step more, another decay. A data setting gets a
    cache of its own (the session's tiny data folder stays the only one in its cache)."""
    cache = tmp_path / "prepared" if change.startswith("data.") else tiny_data
    pretrain_here(cache, tmp_path / "run", *SETTINGS, change)
    assert first_difference(train_losses(tmp_path / "run"), stored()) is not None


if __name__ == "__main__":  # regenerate the stored curve
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "prepared"
        prepare_tiny(cache)
        curve = tiny_curve(cache, Path(folder) / "run")
    CURVE.write_text(json.dumps({"settings": list(SETTINGS), "train_loss": curve}, indent=1) + "\n")
    print(f"wrote {CURVE}: {len(curve)} steps", file=sys.stderr)
