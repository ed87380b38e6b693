"""`bert inspect`: show prepared examples, or one collated batch, as a readable table (and a picture).

For every example: its id, NSP label, length, and a table of positions with the token, segment id (token
type), attention mask and, where a token is masked, the original token and what it became ([MASK], a random
token, or unchanged). `--batch N` collates N examples with the dynamic masks the training collator would draw
for epoch 0 and `--seed`; without it the stored examples are shown (with their masks if masking was static).
`--png FILE` draws the rows: tokens coloured by segment, padding grey, masked tokens red (original below).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bert.errors import UserError

NSP_NAMES = {0: "0 (B is the next text)", 1: "1 (B is random)", -100: "none (MLM only)"}


def _rows(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], Any, dict[str, Any]]:
    """The examples to show as padded arrays (the collator's format), the tokenizer and the metadata."""
    from bert.config import DataConfig
    from bert.data.collator import build_collator
    from bert.data.prepare import load_prepared
    from bert.tokenizer import load_tokenizer

    splits, meta = load_prepared(args.path)
    if args.split not in splits:
        raise UserError(f"{args.path}: no split {args.split!r} (have: {', '.join(splits)})")
    data = splits[args.split]
    count = args.batch or args.num
    if args.start >= len(data):
        raise UserError(
            f"{args.path}: split {args.split} has {len(data)} examples; --start {args.start} is past the end"
        )
    examples = [data[i] for i in range(args.start, min(args.start + count, len(data)))]
    tokenizer = load_tokenizer(Path(args.path) / "tokenizer")
    fields = {k: meta[k] for k in ("masked_lm_prob", "max_predictions_per_seq", "whole_word_mask")}
    collator = build_collator(args.path, DataConfig(**fields), seed=args.seed)
    if not args.batch and not meta.get("static_masking"):
        collator.pad_to_multiple_of = None
        fields = _fields(collator(examples))
        for key in ("masked_lm_positions", "masked_lm_labels"):
            fields.pop(key)  # stored examples have no masks yet: the collator draws them
        fields["input_ids"] = _padded([e["input_ids"] for e in examples], meta["special_token_ids"]["pad"])
    else:
        fields = _fields(collator(examples))
    arrays = {k: v.numpy() for k, v in fields.items() if k != "example_ids"}
    arrays["id"] = np.array([e["id"] for e in examples])
    return arrays, tokenizer, meta


def _fields(batch: Any) -> dict[str, Any]:
    """The tensors of a PretrainingBatch by field name (None fields left out)."""
    import dataclasses

    import torch

    return {
        f.name: getattr(batch, f.name)
        for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    }


def _padded(rows: list[list[int]], pad: int) -> Any:
    import torch

    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def _masked_originals(arrays: dict[str, np.ndarray], row: int) -> dict[int, int]:
    if "masked_lm_positions" not in arrays:
        return {}
    positions, labels = arrays["masked_lm_positions"][row], arrays["masked_lm_labels"][row]
    return {int(p): int(label) for p, label in zip(positions, labels) if label != -100}


def format_table(arrays: dict[str, np.ndarray], tokenizer: Any) -> str:
    """The text table of every row of `arrays`."""
    lines = []
    for row in range(arrays["input_ids"].shape[0]):
        ids = arrays["input_ids"][row]
        attention = arrays["attention_mask"][row]
        real = int(attention.sum())
        masked = _masked_originals(arrays, row)
        header = f"example id {int(arrays['id'][row])}: {real} tokens"
        if "next_sentence_label" in arrays:
            header += f", next_sentence_label {NSP_NAMES.get(int(arrays['next_sentence_label'][row]), '?')}"
        if masked:
            header += f", {len(masked)} masked"
        lines += [header, f"  {'pos':>4} {'token':<18} {'seg':>3} {'att':>3}  masked (original -> input)"]
        for pos in range(len(ids)):
            if attention[pos] == 0:
                lines.append(f"  {pos:>4}..{len(ids) - 1} [PAD] x {len(ids) - pos} (attention 0)")
                break
            token = tokenizer.id_to_token(int(ids[pos])) or "?"
            note = ""
            if pos in masked:
                original = tokenizer.id_to_token(masked[pos])
                kind = "" if token == "[MASK]" else (" (kept)" if masked[pos] == ids[pos] else " (random)")
                note = f"  {original} -> {token}{kind}"
            seg = int(arrays["token_type_ids"][row][pos])
            lines.append(f"  {pos:>4} {token:<18} {seg:>3} {int(attention[pos]):>3}{note}")
        lines.append("")
    return "\n".join(lines)


def draw_png(arrays: dict[str, np.ndarray], tokenizer: Any, path: str, per_line: int = 16) -> None:
    """Draw each example as wrapped rows of token boxes coloured by segment, padding and masking."""
    from bert.plot import pyplot

    plt = pyplot("bert inspect --png")
    from matplotlib.patches import Patch, Rectangle

    colours = {"A": "#cfe2ff", "B": "#d1f2d8", "pad": "#e6e6e6", "mask": "#f8b4b4"}
    batch, width = arrays["input_ids"].shape
    lines_per_example = -(-width // per_line)
    total_lines = batch * (lines_per_example + 1)
    fig, ax = plt.subplots(figsize=(per_line * 1.0, 0.42 * total_lines + 1.0))
    y = 0.0
    for row in range(batch):
        masked = _masked_originals(arrays, row)
        title = f"id {int(arrays['id'][row])}"
        if "next_sentence_label" in arrays:
            title += f"   NSP label {NSP_NAMES.get(int(arrays['next_sentence_label'][row]), '?')}"
        ax.text(0, -y - 0.2, title, fontsize=9, fontweight="bold", va="top")
        y += 0.7
        for pos in range(width):
            col, line = pos % per_line, pos // per_line
            top = -(y + line)
            if arrays["attention_mask"][row][pos] == 0:
                face, text = colours["pad"], "[PAD]"
            else:
                text = tokenizer.id_to_token(int(arrays["input_ids"][row][pos])) or "?"
                face = colours["B"] if arrays["token_type_ids"][row][pos] else colours["A"]
                if pos in masked:
                    face = colours["mask"]
            ax.add_patch(Rectangle((col, top - 0.9), 0.96, 0.86, facecolor=face, edgecolor="#888888", lw=0.4))
            ax.text(col + 0.48, top - 0.38, text[:11], ha="center", va="center", fontsize=6.5)
            if pos in masked:
                original = tokenizer.id_to_token(masked[pos]) or "?"
                ax.text(
                    col + 0.48,
                    top - 0.74,
                    f"({original[:10]})",
                    ha="center",
                    va="center",
                    fontsize=5,
                    color="#8b0000",
                )
        y += lines_per_example + 0.3
    ax.set_xlim(-0.1, per_line + 0.1)
    ax.set_ylim(-y - 0.2, 0.3)
    ax.axis("off")
    legend = [
        Patch(facecolor=colours["A"], edgecolor="#888888", label="segment A (token type 0)"),
        Patch(facecolor=colours["B"], edgecolor="#888888", label="segment B (token type 1)"),
        Patch(facecolor=colours["mask"], edgecolor="#888888", label="masked (original below)"),
        Patch(facecolor=colours["pad"], edgecolor="#888888", label="padding (attention 0)"),
    ]
    ax.legend(
        handles=legend, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=8, frameon=False
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run_inspect(args: argparse.Namespace) -> None:
    """Print the table for `args.path` (see the module docstring) and draw `args.png` when given."""
    arrays, tokenizer, meta = _rows(args)
    mode = (
        f"collated batch of {arrays['input_ids'].shape[0]} (seed {args.seed}, epoch 0)"
        if args.batch
        else "stored examples"
    )
    masking = "static masks" if meta.get("static_masking") else "dynamic masks"
    print(f"{args.path} [{args.split}]: {mode}; {masking}; max_seq_length {meta['max_seq_length']}\n")
    print(format_table(arrays, tokenizer))
    if args.png:
        draw_png(arrays, tokenizer, args.png)
        print(f"wrote {args.png}")
