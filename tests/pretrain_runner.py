"""`bert pretrain` through the CLI in a subprocess (or under torchrun), with test hooks:

    python tests/pretrain_runner.py [--fault SPEC ...] [--record-ids] -- key=value ...

SPEC as in tests/faults.py; --record-ids writes example_ids_rank<r>.jsonl into train.output_dir.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bert.cli import main  # noqa: E402
from tests.faults import hooks  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fault", action="append", default=[])
    parser.add_argument("--record-ids", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    output = next(o.split("=", 1)[1] for o in args.overrides if o.startswith("train.output_dir="))
    record = Path(output) if args.record_ids else None
    sys.exit(main(["pretrain", *args.overrides], hooks=hooks(tuple(args.fault), record)))
