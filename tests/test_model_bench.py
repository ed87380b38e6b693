"""`bert bench`: the realistic batch and a tiny end-to-end run (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bert.bench import realistic_batch
from bert.cli import main


def test_realistic_batch_has_pretraining_shape_and_statistics():
    batch = realistic_batch(64, 128, 1000, torch.Generator().manual_seed(0))
    mask = batch["attention_mask"]
    assert mask.shape == (64, 128)
    assert 0.65 < mask.float().mean() < 0.85  # about 75% real tokens
    assert (mask[:, 0] == 1).all()
    positions, labels = batch["masked_lm_positions"], batch["masked_lm_labels"]
    used = labels != -100
    assert positions.shape[1] == used.sum(1).max() <= 20
    assert (positions[~used] == 0).all()
    rows = torch.arange(64).unsqueeze(1).expand_as(positions)
    assert (batch["input_ids"][rows[used], positions[used]] == 4).all()  # [MASK] at every used slot
    assert (mask[rows[used], positions[used]] == 1).all()


TINY_BENCH = ["bench", "--model", "tiny", "--batch-size", "2", "--seq-len", "16", "--warmup", "0"]


@pytest.mark.e2e
def test_bench_command_runs_both_models(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = [*TINY_BENCH, "--steps", "1"]
    assert main([*args, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ours"]["tokens_per_s"] > 0 and result["reference"]["tokens_per_s"] > 0
    # One FLOP count for both sides: their FLOP/s ratio is the speedup; no MFU on the CPU.
    flops = [result[side]["model_flops_per_s"] for side in ("ours", "reference")]
    assert flops[0] / flops[1] == pytest.approx(result["speedup"])
    assert result["ours"]["mfu"] is None
    printed = capsys.readouterr().out
    assert "speedup" in printed and "model TFLOP/s" in printed


@pytest.mark.e2e
def test_bench_compares_dtypes_interleaved_in_one_run(tmp_path, capsys):
    """`--dtype fp32,bf16`: every side at each dtype, each against transformers at the same dtype and
    against its own fp32."""
    out = tmp_path / "bench.json"
    args = [*TINY_BENCH, "--steps", "2"]
    assert main([*args, "--dtype", "fp32,bf16", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["sides"] == ["ours@fp32", "reference@fp32", "ours@bf16", "reference@bf16"]
    bf16 = result["ours@bf16"]
    assert bf16["dtype"] == "bf16" and bf16["speedup"] == pytest.approx(
        bf16["tokens_per_s"] / result["reference@bf16"]["tokens_per_s"]
    )
    assert bf16["vs_first_dtype"] == pytest.approx(bf16["tokens_per_s"] / result["ours@fp32"]["tokens_per_s"])
    assert "vs fp32" in capsys.readouterr().out
    assert main([*args, "--dtype", "fp8"]) == 2  # one line, not a traceback


def test_matmul_ceiling_takes_each_products_fastest_form(tmp_path):
    out = tmp_path / "ceiling.json"
    script = Path(__file__).resolve().parent.parent / "scripts" / "matmul_ceiling.py"
    args = ["--model", "mini", "--rows", "16", "--repeats", "1", "--threads", "1", "--json", str(out)]
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True)
    result = json.loads(out.read_text())
    ffn = result["shapes"]["ffn up"]
    assert set(ffn["bf16"]["input grad"]) == {"g @ w", "F.linear(g, w.t().contiguous())"}  # both forms timed
    flops, best = 0.0, 0.0
    for shape in result["shapes"].values():
        for forms in shape["bf16"].values():
            flops += 2.0 * 16 * shape["in"] * shape["out"]
            best += min(forms.values())
    assert result["ceiling_tflops"]["bf16"] == pytest.approx(flops / best / 1e12)  # the fastest of each


def test_step_breakdown_prints_every_phase_of_each_dtype():
    script = Path(__file__).resolve().parent.parent / "scripts" / "step_breakdown.py"
    args = ["--model", "tiny", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--dtype", "fp32,bf16"]
    out = subprocess.run(
        [sys.executable, str(script), *args], check=True, capture_output=True, text=True
    ).stdout
    header, *rows = out.splitlines()[1:]
    assert header.split()[:6] == ["dtype", "forward", "+", "loss", "backward", "clip"]
    assert [r.split()[0] for r in rows] == ["fp32", "bf16"]
    assert all(len(r.split()) == 1 + 4 * 3 + 4 for r in rows)  # 4 phases (ms, share), step, 2 figures


def test_pays_off_verdict_in_standard_deviations_of_the_seeds():
    # scripts/bench_pretraining_pays_off.py's verdict: ours - random in the larger of the two seed spreads,
    # more than 3 needed; and ours against the transformers pipeline
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_pretraining_pays_off.py"
    spec = importlib.util.spec_from_file_location("pays_off", script)
    pays_off = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pays_off)

    def glue(mean, std):
        return {"entries": [{"entry": "stsb", "metric": "pearson", "mean": mean, "std": std}]}

    table, (finding,) = pays_off.verdict_table(
        {"ours": glue(0.30, 0.02), "transformers": glue(0.32, 0.01), "random init": glue(0.15, 0.04)}
    )
    assert finding["sigmas_over_random"] == pytest.approx(3.75)  # 0.15 over the random seeds' 0.04
    assert finding["beats_random_by_3_std"] and not finding["at_least_transformers"]
    assert finding["minus_transformers"] == pytest.approx(-0.02)
    assert "| stsb | pearson | 30.00 ± 2.00 | 32.00 ± 1.00 | 15.00 ± 4.00 | +15.00 (+3.8) | -2.00 |" in table
    _, (close,) = pays_off.verdict_table(
        {"ours": glue(0.20, 0.02), "transformers": glue(0.18, 0.01), "random init": glue(0.15, 0.01)}
    )
    assert close["sigmas_over_random"] == pytest.approx(2.5) and not close["beats_random_by_3_std"]
    assert close["at_least_transformers"]
    _, (one_seed,) = pays_off.verdict_table(
        {"ours": glue(0.20, 0.0), "transformers": glue(0.18, 0.0), "random init": glue(0.15, 0.0)}
    )
    assert one_seed["sigmas_over_random"] is None and not one_seed["beats_random_by_3_std"]
