"""Benchmark a BertForPreTraining training step against transformers: a thin wrapper of `bert bench`.

python scripts/bench_model.py --model mini --batch-size 32
python scripts/bench_model.py --model base --batch-size 8 --json bench_base.json
"""

import sys

from bert.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
