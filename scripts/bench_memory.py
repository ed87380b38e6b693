"""Host memory of a long pretraining run on the CPU, with and without handing freed heap memory back.

    python scripts/bench_memory.py [--steps 1500] [--batch-size 16] [--every 20]

Runs `bert pretrain` (BERT-mini on the shared corpus, configs/pretrain/shared_corpus_mini.yaml) twice, each in
a fresh process: `train.release_memory_every=null`, then `=--every`. Prints the resident memory (VmRSS,
logged as train/rss_gb every 50 steps) against the step for both, and the growth over the second half of the
run in MB per 1000 steps: a plateau is a growth near 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(steps: int, batch: int, every: str, folder: Path) -> dict[int, float]:
    out = folder / f"run_{every}"
    command = [
        sys.executable, "-m", "bert.cli", "pretrain", str(REPO / "configs" / "pretrain" / "shared_corpus_mini.yaml"),
        f"train.output_dir={out}", f"train.max_steps={steps}", f"train.batch_size={batch}", "train.log_every=50",
        "train.eval_every=0", "train.save_every=0", "logging.trackers=[]", "logging.progress_bar=false",
        f"train.release_memory_every={every}",
    ]  # fmt: skip
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, env={**os.environ})
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["train/rss_gb"] for m in lines if "train/rss_gb" in m}


def growth(rss: dict[int, float]) -> float:
    """MB per 1000 steps over the second half (least squares)."""
    points = sorted(rss.items())[len(rss) // 2 :]
    n = len(points)
    mx, my = sum(s for s, _ in points) / n, sum(r for _, r in points) / n
    slope = sum((s - mx) * (r - my) for s, r in points) / max(sum((s - mx) ** 2 for s, _ in points), 1e-9)
    return slope * 1000 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--every", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        kept = run(args.steps, args.batch_size, "null", Path(tmp))
        released = run(args.steps, args.batch_size, str(args.every), Path(tmp))
    print(f"BERT-mini, batch {args.batch_size}, shared corpus: resident memory (GB) by step")
    print(f"{'step':>6} {'kept (null)':>12} {'released every ' + str(args.every):>20}")
    for step in sorted(kept):
        print(f"{step:>6} {kept[step]:>12.3f} {released.get(step, float('nan')):>20.3f}")
    print(
        f"growth over the second half: kept {growth(kept):+.0f} MB / 1000 steps, released {growth(released):+.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
