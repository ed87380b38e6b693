"""Benchmark `bert prepare` end to end on ../shared/data/corpus against the raw `tokenizers` floor.

    python scripts/bench_prepare.py                 # the corpus once
    python scripts/bench_prepare.py --repeat 4      # also the corpus four times: peak memory must not grow much

For each corpus size it runs `bert prepare` in a child process (fresh output folder), samples the memory of
that process and all its children (worker processes included) every 50 ms, and prints wall time, peak RSS and
PSS summed over the process tree (RSS counts pages shared with forked workers once per worker) and tokens/s. The floor is what `tokenizers` alone needs on the same text in this process:
train a WordPiece vocabulary of the same size from the raw lines, then `encode_batch` every line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "data" / "corpus"
TEXT_SUFFIXES = {".txt"}


def _tree_memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) summed over `pid` and its descendants, from /proc.

    RSS counts pages shared by forked workers once per process; PSS splits them between the sharers, so the
    PSS sum is the memory the tree really holds."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    rss = pss = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
        stack.extend(children.get(current, []))
    return rss, pss


def run_prepare(corpus: list[str], out: Path, extra: list[str]) -> dict:
    command = [
        sys.executable,
        "-m",
        "bert.cli",
        "prepare",
        f"data.corpus={json.dumps(corpus)}",
        *extra,
        "--output",
        str(out),
        "--force",
    ]
    started = time.perf_counter()
    errors = open(out.parent / f"{out.name}.stderr", "w")  # progress bars; shown when prepare fails
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, pss = _tree_memory_kb(process.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    errors.close()
    if process.returncode != 0:
        tail = (out.parent / f"{out.name}.stderr").read_text()[-2000:]
        raise SystemExit(f"bert prepare failed ({process.returncode}):\n{stdout}\n{tail}")
    meta = json.loads((out / "meta.json").read_text())
    counts = meta["counts"]
    tokens = counts["train"]["tokens"] + counts["validation"]["tokens"]
    return {
        "wall_s": wall,
        "peak_rss_mb": peak[0] / 1024,
        "peak_pss_mb": peak[1] / 1024,
        "tokens": tokens,
        "summary": stdout.strip(),
    }


def tokenizers_floor(files: list[Path], vocab_size: int) -> dict:
    """Train + encode with `tokenizers` alone on the raw non-empty lines (the fastest this can be)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    lines = []
    for path in files:
        lines.extend(line for line in path.read_text(errors="replace").splitlines() if line.strip())
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        show_progress=False,
    )
    started = time.perf_counter()
    tokenizer.train_from_iterator(lines, trainer)
    trained = time.perf_counter()
    encoded = tokenizer.encode_batch_fast(lines, add_special_tokens=False)
    done = time.perf_counter()
    return {
        "train_s": trained - started,
        "encode_s": done - trained,
        "tokens": sum(len(e.ids) for e in encoded),
        "words": sum(len(line.split()) for line in lines),
    }


def repeated_corpus(files: list[Path], times: int, folder: Path) -> list[str]:
    """`times` copies of the corpus as symlinks under distinct folders (distinct documents to the reader)."""
    for copy in range(times):
        for path in files:
            target = folder / f"copy{copy}" / path.relative_to(CORPUS)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    return [str(folder)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="also prepare the corpus repeated this many times"
    )
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for bert prepare")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        raise SystemExit(f"{CORPUS} not found")
    files = sorted(p for p in CORPUS.rglob("*") if p.suffix in TEXT_SUFFIXES)
    extra = [f"data.vocab_size={args.vocab_size}", *args.overrides]
    print(
        f"corpus {CORPUS}: {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB; "
        f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}"
    )

    floor = tokenizers_floor(files, args.vocab_size)
    floor_s = floor["train_s"] + floor["encode_s"]
    print(
        f"tokenizers floor : train {floor['train_s']:.2f} s + encode {floor['encode_s']:.2f} s = {floor_s:.2f} s "
        f"({floor['words'] / 1e6:.2f}M words, {floor['tokens'] / 1e6:.2f}M tokens)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        once = run_prepare([str(CORPUS)], Path(tmp) / "once", extra)
        print(once["summary"])
        print(
            f"bert prepare x1  : {once['wall_s']:.2f} s wall, peak RSS {once['peak_rss_mb']:.0f} MB "
            f"(PSS {once['peak_pss_mb']:.0f} MB), "
            f"{once['tokens'] / once['wall_s'] / 1e3:.0f}k tokens/s; {once['wall_s'] / floor_s:.2f}x the floor"
        )
        if args.repeat > 1:
            corpus = repeated_corpus(files, args.repeat, Path(tmp) / "repeated")
            many = run_prepare(corpus, Path(tmp) / "many", extra)
            print(
                f"bert prepare x{args.repeat}  : {many['wall_s']:.2f} s wall, peak RSS {many['peak_rss_mb']:.0f} MB "
                f"(PSS {many['peak_pss_mb']:.0f} MB), "
                f"{many['tokens'] / many['wall_s'] / 1e3:.0f}k tokens/s"
            )
            print(
                f"peak memory x{args.repeat} / x1 = RSS {many['peak_rss_mb'] / once['peak_rss_mb']:.2f}, "
                f"PSS {many['peak_pss_mb'] / once['peak_pss_mb']:.2f} (goal < 1.5); "
                f"time x{args.repeat} / x1 = {many['wall_s'] / once['wall_s']:.2f}"
            )
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
