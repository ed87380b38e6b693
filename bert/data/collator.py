"""The pretraining collator: prepared examples -> a padded batch of LongTensors with MLM masks.

It returns a `bert.batch.PretrainingBatch` (the fields, shapes and meanings are documented there):
    input_ids, token_type_ids, attention_mask   # (B, T), T = longest row rounded up to pad_to_multiple_of
                                               #   (static shapes: T = max_seq_length)
    masked_lm_positions                        # (B, P), P = most masked tokens in a row; unused slots 0
                                               #   (static shapes: P = max_predictions_per_seq)
    masked_lm_labels                           # (B, P), original ids; unused slots IGNORE_INDEX (-100)
    next_sentence_label                        # (B,), 0 = is next, 1 = random; None in MLM-only data
    example_ids                                # (B, 2) (epoch, id) when the examples carry their epoch

With `static_shapes` every batch has the same T and P, so a compiled model (and CUDA graphs) is built once
instead of once per new shape; the counts the training step normalises by (`host_counts`) are taken here,
on the host, so the step never reads them back from a device.

attention_mask is 1 on real tokens and 0 on padding (Hugging Face polarity). Masking is dynamic by default:
each example's mask is a pure function of (seed, epoch, example id) (see `masking.py`), so a resumed run draws
the same masks without any saved RNG state. The epoch comes from the example's `epoch` key when present, else
from `set_epoch`. Data prepared with static masks is passed through as stored.

Speed: one Python step per row (copying its ids into the padded array); masking works on the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert.batch import IGNORE_INDEX, PretrainingBatch
from bert.config import DataConfig
from bert.data.masking import MaskingSpec, example_seeds, mask_batch


class PretrainingCollator:
    """Pads prepared examples into a batch; draws their MLM masks (dynamic) or keeps stored ones (static)."""

    def __init__(
        self,
        spec: MaskingSpec,
        pad_id: int,
        masked_lm_prob: float = 0.15,
        max_predictions_per_seq: int = 20,
        pad_to_multiple_of: int | None = 8,
        seed: int = 0,
        static_masking: bool = False,
        static_shapes: bool = False,
        max_seq_length: int | None = None,
        vocab_size: int | None = None,
    ) -> None:
        if static_shapes and not max_seq_length:
            raise ValueError("static_shapes needs max_seq_length")
        self.spec = spec
        self.pad_id = pad_id
        self.masked_lm_prob = masked_lm_prob
        self.max_predictions_per_seq = max_predictions_per_seq
        self.pad_to_multiple_of = pad_to_multiple_of
        self.seed = seed
        self.static_masking = static_masking
        self.static_shapes = static_shapes
        self.max_seq_length = max_seq_length
        self.vocab_size = vocab_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for examples without an `epoch` key; new epoch, new masks."""
        self.epoch = epoch

    def _pad(self, rows: Sequence[Any], width: int, fill: int) -> np.ndarray:
        out = np.full((len(rows), width), fill, dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def _check_ids(self, input_ids: np.ndarray, token_type_ids: np.ndarray, examples: Sequence[Any]) -> None:
        """Ids outside the vocabulary or segments other than 0/1 are damaged data (a flipped byte keeps a
        shard's size): one line naming the examples, never a silent step or an IndexError hours later."""
        vocab = self.vocab_size
        ids_ok = vocab is None or (input_ids.min() >= 0 and input_ids.max() < vocab)
        if ids_ok and token_type_ids.min() >= 0 and token_type_ids.max() <= 1:  # every batch: four reductions
            return
        bad = (token_type_ids < 0).any(1) | (token_type_ids > 1).any(1)  # (B,): only for the message
        if vocab is not None:
            bad |= (input_ids < 0).any(1) | (input_ids >= vocab).any(1)
        from bert.errors import UserError

        ids = [examples[i].get("id", i) for i in np.flatnonzero(bad).tolist()]
        raise UserError(
            f"prepared example(s) {ids}: token ids outside the vocabulary of {vocab} or segment ids other "
            "than 0/1 (damaged data); run bert prepare with --force to rebuild the folder"
        )

    def __call__(self, examples: Sequence[dict[str, Any]]) -> PretrainingBatch:
        lengths = np.fromiter((len(e["input_ids"]) for e in examples), dtype=np.int64, count=len(examples))
        width = int(lengths.max())
        if self.static_shapes:
            width = max(width, int(self.max_seq_length))
        elif self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = self._pad([e["input_ids"] for e in examples], width, self.pad_id)  # (B, T)
        token_type_ids = self._pad([e["token_type_ids"] for e in examples], width, 0)  # (B, T)
        self._check_ids(input_ids, token_type_ids, examples)
        attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)  # (B, T)

        if self.static_masking:
            counts = [len(e["masked_lm_positions"]) for e in examples]
            width_p = max(max(counts), 1)
            if self.static_shapes:
                width_p = max(width_p, self.max_predictions_per_seq)
            positions = self._pad([e["masked_lm_positions"] for e in examples], width_p, 0)  # (B, P)
            labels = self._pad([e["masked_lm_labels"] for e in examples], width_p, IGNORE_INDEX)  # (B, P)
        else:
            ids = np.fromiter((e["id"] for e in examples), dtype=np.int64, count=len(examples))
            epochs = np.fromiter(
                (e.get("epoch", self.epoch) for e in examples), dtype=np.int64, count=len(examples)
            )
            masked = mask_batch(
                input_ids,
                lengths,
                example_seeds(self.seed, epochs, ids),
                self.spec,
                self.masked_lm_prob,
                self.max_predictions_per_seq,
            )
            input_ids, positions, labels = (
                masked.input_ids,
                masked.masked_lm_positions,
                masked.masked_lm_labels,
            )
            if self.static_shapes and positions.shape[1] < self.max_predictions_per_seq:
                extra = self.max_predictions_per_seq - positions.shape[1]
                positions = np.pad(positions, ((0, 0), (0, extra)))  # unused slots: position 0
                labels = np.pad(labels, ((0, 0), (0, extra)), constant_values=IGNORE_INDEX)

        nsp, nsp_labelled = None, 0
        if "next_sentence_label" in examples[0]:
            nsp_labels = np.fromiter((e["next_sentence_label"] for e in examples), dtype=np.int64)
            nsp_labelled = int((nsp_labels != IGNORE_INDEX).sum())
            nsp = torch.from_numpy(nsp_labels)  # (B,)
        example_ids = None
        if "epoch" in examples[0]:
            example_ids = torch.tensor([[e["epoch"], e["id"]] for e in examples])  # (B, 2)
        return PretrainingBatch(
            input_ids=torch.from_numpy(input_ids),
            token_type_ids=torch.from_numpy(token_type_ids),
            attention_mask=torch.from_numpy(attention_mask),
            masked_lm_positions=torch.from_numpy(positions),
            masked_lm_labels=torch.from_numpy(labels),
            next_sentence_label=nsp,
            example_ids=example_ids,
            host_counts=(int((labels != IGNORE_INDEX).sum()), nsp_labelled, int(lengths.sum())),
            seq_lengths=tuple(lengths.tolist()),
        )


def build_collator(
    prepared_folder: str | Path, data_cfg: DataConfig, seed: int, static_shapes: bool = False
) -> PretrainingCollator:
    """A collator for a prepared folder: vocabulary from its tokenizer, masking settings from `data_cfg`;
    `static_shapes`: every batch (B, max_seq_length) with max_predictions_per_seq slots."""
    from bert.data.prepared import read_meta
    from bert.tokenizer import load_tokenizer, special_ids

    folder = Path(prepared_folder)
    meta = read_meta(folder)
    tokenizer = load_tokenizer(folder / "tokenizer")
    ids = special_ids(tokenizer)
    spec = MaskingSpec.from_vocab(tokenizer.get_vocab(), ids.all, ids.mask, data_cfg.whole_word_mask)
    return PretrainingCollator(
        spec,
        pad_id=ids.pad,
        masked_lm_prob=data_cfg.masked_lm_prob,
        max_predictions_per_seq=data_cfg.max_predictions_per_seq,
        pad_to_multiple_of=data_cfg.pad_to_multiple_of,
        seed=seed,
        static_masking=bool(meta.get("static_masking", False)),
        static_shapes=static_shapes,
        max_seq_length=data_cfg.max_seq_length,
        vocab_size=tokenizer.get_vocab_size(),
    )
