"""How long a pretraining checkpoint takes to save: what must fit in a scheduler's grace period.

    python scripts/bench_checkpoint.py [--models base,large] [--folder /path/on/the/target/filesystem]

For each model: BertForPreTraining with AdamW moments (after one step), saved by the training's own
Checkpointer (weights, optimizer state, RNG, tokenizer-less meta, fsync, the COMPLETE marker with every file's
sha256, the rename into place); then the parts timed apart on the saved folder: reading it back for the
hashes alone, and fsync. Prints seconds and GB per model.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="base,large")
    parser.add_argument("--folder", default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args()

    import torch
    from accelerate import Accelerator

    from bert import checkpoint as ckpt
    from bert import fs
    from bert.config import PretrainConfig, load_config
    from bert.model import BertForPreTraining

    accelerator = Accelerator(cpu=True)
    for name in args.models.split(","):
        root = Path(tempfile.mkdtemp(dir=args.folder, prefix=f"ckpt_{name}_"))
        config = load_config(PretrainConfig, None, [f"model={name}"]).model
        model = BertForPreTraining(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()  # moments exist, as in a running job
        optimizer.zero_grad(set_to_none=True)
        saver = ckpt.Checkpointer(root, accelerator, fs.unique_token(), keep_last=None)
        started = time.perf_counter()
        folder = saver.save(1, model, optimizer, {"data": {}, "counters": {}, "run_id": "x", "config": {}})
        total = time.perf_counter() - started
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e9
        started = time.perf_counter()
        ckpt.write_marker(folder)  # the hashes again: what they cost on their own
        hashing = time.perf_counter() - started
        started = time.perf_counter()
        fs.fsync_tree(folder)
        fsync = time.perf_counter() - started
        print(
            f"BERT-{name}: {size:.2f} GB saved in {total:.1f} s (of which hashing ~{hashing:.1f} s when "
            f"re-read from the page cache, fsync of written data {fsync:.2f} s)",
            flush=True,
        )
        shutil.rmtree(root)
        del model, optimizer
    return 0


if __name__ == "__main__":
    sys.exit(main())
