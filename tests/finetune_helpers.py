"""Helpers of the fine-tuning tests: a tiny random model with a small vocabulary, learnable rows, TSV files."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [f"w{i}" for i in range(24)]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_model(folder: Path, with_tokenizer: bool = True) -> Path:
    """A random-init 2-layer BERT saved like an export, with a small vocab.txt tokenizer."""
    import torch

    from bert.model import BertConfig, BertForPreTraining

    vocab = SPECIALS + ["yes", "no"] + WORDS
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    BertForPreTraining(config).save_pretrained(folder)
    if with_tokenizer:
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return folder


def make_rows(n: int, rng: random.Random, labelled: bool = True) -> list[list[str]]:
    """Label 1 when the first text says 'yes': learnable by a tiny model in a few dozen steps."""
    rows = []
    for i in range(n):
        label = rng.random() < 0.5
        a = rng.sample(WORDS, rng.randint(2, 6)) + ["yes" if label else "no"]
        rng.shuffle(a)
        b = rng.sample(WORDS, rng.randint(1, 8))
        rows.append([str(i), " ".join(a).upper(), " ".join(b)] + ([str(int(label))] if labelled else []))
    return rows


def write(path: Path, header: list[str], rows: list[list[str]]) -> str:
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    return str(path)
