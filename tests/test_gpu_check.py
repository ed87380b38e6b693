"""scripts/gpu_check.sh, the GPU check, in its CPU dry run: every section runs and reports, none fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_the_gpu_check_dry_run_reports_every_section(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    for section in ("environment", "bench", "parity", "no_host_sync", "pretraining", "compile"):
        assert "error" not in report[section], (section, report[section].get("error"))
    rows = report["bench"]["rows"]
    assert {r["attn"] for r in rows} == {"eager", "sdpa", "unpadded"} and not any("error" in r for r in rows)
    assert all(r["reference"]["tokens_per_s"] > 0 for r in rows if r["fast_paths"] == "off")
    assert all("mfu_executed" in r["ours"] for r in rows)
    assert {r["kernel"] for r in rows if r["attn"] == "unpadded"} == {"padded_sdpa"}  # CPU, fast paths off
    assert report["parity"]["within_tolerance"]
    assert report["pretraining"]["steps"] == 4 and report["pretraining"]["loss_curve"]
    assert report["compile"]["compiled_step_s"] > 0
    assert "GPU check (CPU dry run)" in (tmp_path / "gpu_check.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.txt"]


@pytest.mark.e2e
def test_sections_can_be_chosen_and_a_time_box_stops_a_section(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import gpu_check

    with pytest.raises(gpu_check.SectionTimeout):
        with gpu_check.time_box(0.2):
            while True:
                pass
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu", "--out", str(tmp_path),
         "--sections", "environment,parity"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {"environment", "parity"} <= set(report) and "bench" not in report
