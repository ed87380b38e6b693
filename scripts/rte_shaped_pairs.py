"""Write a sentence-pair task with the shape of GLUE RTE, made from real text, for memory and speed checks.

    python scripts/rte_shaped_pairs.py OUT_DIR [--corpus ../shared/data/corpus/gutenberg] [--seed 0]

RTE itself is not in ../shared/data. What memory and step time depend on is the shape of the batches: RTE has
2,490 training and 277 dev pairs, a premise of one to a few sentences (about 40-50 words on average, with a
long tail past 128 tokens) and a short hypothesis (about 10 words). This script cuts pairs of that shape from
the corpus's books: the premise a run of consecutive sentences of a drawn length, the hypothesis a sentence of
5-20 words from the same book ("entailment") or another ("not_entailment"). The labels mean nothing beyond
that; the figures it serves are memory and time, never accuracy. Writes OUT_DIR/train.tsv and dev.tsv in the
GLUE RTE layout (index, sentence1, sentence2, label).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def book_sentences(path: Path) -> list[str]:
    """The sentences of a hard-wrapped text file: paragraphs joined, then split after . ! ?"""
    text = path.read_text(encoding="utf-8", errors="replace")
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        sentences.extend(s for s in SENTENCE_END.split(flat) if len(s.split()) >= 3)
    return sentences


def make_pairs(books: list[list[str]], count: int, rng: random.Random) -> list[tuple[str, str, str]]:
    pairs = []
    while len(pairs) < count:
        book = rng.randrange(len(books))
        sentences = books[book]
        start = rng.randrange(len(sentences) - 20)
        target = min(int(rng.lognormvariate(3.3, 0.5)), 200)  # words drawn: median 27, long tail
        premise, i = [], start
        while sum(len(s.split()) for s in premise) < target and i < start + 20:
            premise.append(sentences[i])
            i += 1
        same = rng.random() < 0.5
        source = sentences if same else books[rng.choice([b for b in range(len(books)) if b != book])]
        hypothesis = next(
            (s for s in (rng.choice(source) for _ in range(50)) if 5 <= len(s.split()) <= 20), source[0]
        )
        pairs.append((" ".join(premise), hypothesis, "entailment" if same else "not_entailment"))
    return pairs


def write_tsv(path: Path, pairs: list[tuple[str, str, str]]) -> None:
    lines = ["index\tsentence1\tsentence2\tlabel"]
    for i, (a, b, label) in enumerate(pairs):
        lines.append(f"{i}\t{a.replace(chr(9), ' ')}\t{b.replace(chr(9), ' ')}\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", type=Path)
    parser.add_argument(
        "--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "corpus" / "gutenberg"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=2490, help="training pairs (RTE: 2,490)")
    parser.add_argument("--dev", type=int, default=277, help="dev pairs (RTE: 277)")
    args = parser.parse_args()
    files = sorted(p for p in args.corpus.glob("*.txt"))
    if len(files) < 2:
        print(f"rte_shaped_pairs: need at least two .txt books in {args.corpus}", file=sys.stderr)
        return 2
    books = [s for s in (book_sentences(p) for p in files) if len(s) > 100]
    rng = random.Random(args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    write_tsv(args.output / "train.tsv", make_pairs(books, args.train, rng))
    write_tsv(args.output / "dev.tsv", make_pairs(books, args.dev, rng))
    print(
        f"written: {args.output / 'train.tsv'} ({args.train} pairs), {args.output / 'dev.tsv'} ({args.dev})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
