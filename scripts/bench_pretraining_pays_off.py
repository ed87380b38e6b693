"""Pretraining pays off: `bert glue` of a pretrained model against the same shape from random initialisation.

    python scripts/bench_pretraining_pays_off.py --pretrain          # pretrain first (configs/pretrain/cpu_budget_mini.yaml)
    python scripts/bench_pretraining_pays_off.py --export runs/cpu_budget_mini/export --seeds 1,2,3

The pretrained side is an export of `bert pretrain` (with --pretrain, the CPU-budget preset is run first:
BERT-mini, 30 minutes on ../shared/data/corpus). The other side is a model of the same config and tokenizer
with freshly initialised weights (seed --init-seed), written beside the results. Both go through `bert glue`
with the same tasks, seeds and overrides, each in a process of its own, and the script prints one table:
per entry, the primary metric (mean +- std over seeds) of both sides and the difference. Results as JSON
with --json; each side's glue.json/glue.md stay under --output.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = {"config.json", "model.safetensors"}


def random_twin(export: Path, output: Path, seed: int) -> Path:
    """A model folder with `export`'s config and tokenizer files and freshly initialised weights."""
    import shutil

    import torch

    from bert.export import write_export
    from bert.model import BertForPreTraining
    from bert.model.config import BertConfig

    torch.manual_seed(seed)
    model = BertForPreTraining(BertConfig.from_pretrained(export))
    write_export(model, None, output)
    for path in export.iterdir():
        if path.is_file() and path.name not in MODEL_FILES:
            shutil.copy2(path, output / path.name)
    return output


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    code = subprocess.run(command, cwd=ROOT).returncode
    if code != 0:
        raise SystemExit(f"bench_pretraining_pays_off: `{' '.join(command[2:4])}` failed (exit {code})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pretrain", action="store_true", help="run configs/pretrain/cpu_budget_mini.yaml first"
    )
    parser.add_argument("--budget", default="30m", help="train.max_time of that pretraining (default 30m)")
    parser.add_argument("--export", type=Path, default=ROOT / "runs" / "cpu_budget_mini" / "export")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "glue")
    parser.add_argument("--tasks", default="mrpc")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated fine-tuning seeds (default 1,2,3)")
    parser.add_argument("--init-seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "pays_off")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for both `bert glue` runs")
    args, rest = parser.parse_known_args()
    overrides = args.overrides + [item for item in rest if "=" in item and not item.startswith("-")]
    if len(overrides) != len(args.overrides) + len(rest):
        parser.error(f"unrecognized arguments: {' '.join(r for r in rest if r not in overrides)}")

    bert = [sys.executable, "-m", "bert.cli"]
    if args.pretrain:
        run([*bert, "pretrain", "configs/pretrain/cpu_budget_mini.yaml", f"train.max_time={args.budget}"])
    if not (args.export / "config.json").is_file():
        print(
            f"bench_pretraining_pays_off: no model at {args.export} (use --pretrain or --export)",
            file=sys.stderr,
        )
        return 2
    if not args.data.is_dir():
        print(f"bench_pretraining_pays_off: no GLUE folder at {args.data} (use --data)", file=sys.stderr)
        return 2
    twin = random_twin(args.export, args.output / "random_init_model", args.init_seed)
    seeds = f"train.seeds=[{args.seeds}]"
    verdicts = {}
    for side, model in (("pretrained", args.export), ("random init", twin)):
        out = args.output / side.replace(" ", "_")
        run([*bert, "glue", str(model), "--data", str(args.data), "--tasks", args.tasks, "--output", str(out),
             seeds, *overrides])  # fmt: skip
        verdicts[side] = json.loads((out / "glue.json").read_text())

    pre, rnd = verdicts["pretrained"], verdicts["random init"]
    print(f"\nGLUE dev, seeds {args.seeds}: {args.export} against the same shape from random initialisation")
    print("| entry | metric | pretrained | random init | difference |")
    print("|---|---|---|---|---|")
    for a, b in zip(pre["entries"], rnd["entries"], strict=True):
        print(
            f"| {a['entry']} | {a['metric']} | {a['mean'] * 100:.2f} ± {a['std'] * 100:.2f} | "
            f"{b['mean'] * 100:.2f} ± {b['std'] * 100:.2f} | {(a['mean'] - b['mean']) * 100:+.2f} |"
        )
    print(f"| average | | {pre['average'] * 100:.2f} | {rnd['average'] * 100:.2f} | "
          f"{(pre['average'] - rnd['average']) * 100:+.2f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(verdicts, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
