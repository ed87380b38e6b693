"""Fine-tuning data: pairs tokenised once (and cached), batches of similar lengths, padded `PairBatch`es.

- `encode_split`: every pair of a split tokenised in one batch call (Rust threads), truncated longest-first,
  stored flat (ids, segment ids and row offsets), cached on disk by content;
- `LengthGroupedBatchSampler`: shuffle, cut into mega-batches of `mega_batch` batches, sort each by length,
  shuffle the batches; a pure function of (seed, epoch);
- `PairCollator`: pads a batch to its longest row -> `bert.batch.PairBatch` (attention_mask 1 = real token);
  with `model.attn_implementation: unpadded` the model drops that padding before the embeddings;
- `FinetuneData`: a task's tokenised splits, shared by every seed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from bert import fs
from bert.batch import PairBatch
from bert.tasks import PairExamples, Task


@dataclass
class EncodedSplit:
    """A tokenised split: ragged rows stored flat (`offsets` (N + 1,)) plus labels."""

    input_ids: np.ndarray  # (total tokens,) int32
    token_type_ids: np.ndarray  # (total tokens,) int8
    offsets: np.ndarray  # (N + 1,) int64; row i is [offsets[i], offsets[i + 1])
    labels: np.ndarray | None  # (N,) int64 or float32

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def subset(self, rows: np.ndarray) -> EncodedSplit:
        """The rows `rows` (in that order) as a split of their own."""
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        pieces = [np.arange(s, e) for s, e in zip(starts, ends)]
        flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(ends - starts)
        labels = self.labels[rows] if self.labels is not None else None
        return EncodedSplit(self.input_ids[flat], self.token_type_ids[flat], offsets, labels)


def _read_cache(path: Path, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A token cache's arrays, or None (with one warning naming the file, which is then rebuilt) when it is
    damaged: unreadable, or arrays that do not fit together."""
    import sys
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as data:
            ids, types, offsets = data["input_ids"], data["token_type_ids"], data["offsets"]
        if len(offsets) != rows + 1 or int(offsets[-1]) != len(ids) or len(types) != len(ids):
            raise ValueError("arrays of mismatched lengths")
        return ids, types, offsets
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        print(f"warning: {path}: damaged token cache ({err}); tokenising again", file=sys.stderr, flush=True)
        return None


def encode_split(
    tokenizer: Tokenizer, examples: PairExamples, max_length: int, cache_dir: str | None = None
) -> EncodedSplit:
    """Tokenise every pair once (batch encode, in Rust threads); reuse a cached result with the same content."""
    cache = None
    if cache_dir:
        digest = hashlib.sha1(tokenizer.to_str().encode())
        digest.update(f"{max_length}\0".encode())
        for a, b in zip(examples.text_a, examples.text_b):
            digest.update(f"{a}\0{b}\0".encode())
        cache = Path(cache_dir) / f"{digest.hexdigest()[:20]}.npz"
        if cache.is_file():
            cached = _read_cache(cache, len(examples))
            if cached is not None:
                return EncodedSplit(*cached, examples.labels)
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    ids_parts, type_parts = [], []
    chunk = 4096  # bounded memory: the Encoding objects of a large task (QQP: 364k pairs) are big
    for start in range(0, len(examples), chunk):
        pairs = list(zip(examples.text_a[start : start + chunk], examples.text_b[start : start + chunk]))
        encodings = tokenizer.encode_batch(pairs)
        lengths = [len(e.ids) for e in encodings]
        offsets[start + 1 : start + 1 + len(lengths)] = lengths
        ids_parts.append(
            np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32, count=sum(lengths))
        )
        type_parts.append(
            np.fromiter((t for e in encodings for t in e.type_ids), dtype=np.int8, count=sum(lengths))
        )
    np.cumsum(offsets, out=offsets)
    input_ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int32)
    type_ids = np.concatenate(type_parts) if type_parts else np.zeros(0, dtype=np.int8)
    if cache is not None:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, input_ids=input_ids, token_type_ids=type_ids, offsets=offsets)
        fs.atomic_write_bytes(cache, buffer.getvalue())  # a concurrent reader sees all or nothing
    return EncodedSplit(input_ids, type_ids, offsets, examples.labels)


class PairDataset(torch.utils.data.Dataset):
    """Row i of an `EncodedSplit` as numpy arrays; `PairCollator` pads them into a batch."""

    def __init__(self, encoded: EncodedSplit) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, np.ndarray, float]:
        e = self.encoded
        start, end = e.offsets[i], e.offsets[i + 1]
        label = e.labels[i] if e.labels is not None else 0
        return i, e.input_ids[start:end], e.token_type_ids[start:end], label


class LengthGroupedBatchSampler:
    """Batches of similar-length rows in random order, a pure function of (seed, epoch).

    Shuffle all rows, cut them into mega-batches of `mega_batch * batch_size`, sort each mega-batch by length
    and cut it into batches, then shuffle the batches. Padding shrinks to almost nothing while every batch is
    still a random draw (only its neighbours in length are correlated). `group=False` gives plain random
    batches; `shuffle=False` gives batches in length order (evaluation: the order does not matter there).
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int = 0,
        mega_batch: int = 50,
        group: bool = True,
        shuffle: bool = True,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch = mega_batch
        self.group = group
        self.shuffle = shuffle
        self.drop_last = False  # read by Accelerate when it shards the batches over processes
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            yield from (order[i : i + size].tolist() for i in range(0, n, size))
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        if not self.group:
            yield from (order[i : i + size].tolist() for i in range(0, n, size))
            return
        chunk = size * max(self.mega_batch, 1)
        batches = []
        for start in range(0, n, chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(-self.lengths[part], kind="stable")]
            batches.extend(part[i : i + size] for i in range(0, len(part), size))
        for b in rng.permutation(len(batches)):
            yield batches[b].tolist()


class PairCollator:
    """Pads a list of rows to the longest (optionally rounded up) -> `PairBatch`."""

    def __init__(self, pad_token_id: int, regression: bool, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.regression = regression
        self.multiple = pad_to_multiple_of

    def __call__(self, rows: list[tuple[int, np.ndarray, np.ndarray, Any]]) -> PairBatch:
        longest = max(len(r[1]) for r in rows)
        if self.multiple:
            longest = -(-longest // self.multiple) * self.multiple
        input_ids = np.full((len(rows), longest), self.pad_token_id, dtype=np.int64)  # (B, T)
        token_type_ids = np.zeros((len(rows), longest), dtype=np.int64)  # (B, T)
        attention_mask = np.zeros((len(rows), longest), dtype=np.int64)  # (B, T) 1 = real, 0 = pad
        for row, (_, ids, types, _) in enumerate(rows):
            input_ids[row, : len(ids)] = ids
            token_type_ids[row, : len(ids)] = types
            attention_mask[row, : len(ids)] = 1
        labels = np.asarray([r[3] for r in rows], dtype=np.float32 if self.regression else np.int64)
        return PairBatch(
            input_ids=torch.from_numpy(input_ids),
            token_type_ids=torch.from_numpy(token_type_ids),
            attention_mask=torch.from_numpy(attention_mask),
            labels=torch.from_numpy(labels),
            index=torch.tensor([r[0] for r in rows]),
        )


def make_loader(
    encoded: EncodedSplit, sampler: LengthGroupedBatchSampler, collator: PairCollator, num_workers: int = 0
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        PairDataset(encoded), batch_sampler=sampler, collate_fn=collator, num_workers=num_workers
    )


def eval_loader(encoded: EncodedSplit, collator: PairCollator, batch_size: int, num_workers: int = 0) -> Any:
    """Batches in length order (least padding), for predictions put back in order by `PairBatch.index`."""
    sampler = LengthGroupedBatchSampler(encoded.lengths, batch_size, shuffle=False)
    return make_loader(encoded, sampler, collator, num_workers)


@dataclass
class FinetuneData:
    """The task's tokenised splits, shared by every seed."""

    train: EncodedSplit | None
    dev: dict[str, EncodedSplit]
    test: dict[str, EncodedSplit]
    test_examples: dict[str, PairExamples]
    pad_token_id: int

    @classmethod
    def load(
        cls,
        task: Task,
        tokenizer: Tokenizer,
        max_length: int,
        cache_dir: str | None,
        predict_test: bool,
        max_train_examples: int | None = None,
        seed: int = 0,
    ) -> FinetuneData:
        """Every split the run needs; `max_train_examples` subsamples the training set deterministically."""

        def encode(split: str) -> EncodedSplit:
            return encode_split(tokenizer, task.read(split), max_length, cache_dir)

        train = encode("train")
        if max_train_examples is not None and len(train) > max_train_examples:
            rows = np.random.default_rng([seed, 7]).choice(len(train), max_train_examples, replace=False)
            train = train.subset(np.sort(rows))
        test_names = [s for s in task.split_names("test") if predict_test and task.has_split(s)]
        data = cls(
            train=train,
            dev={s: encode(s) for s in task.split_names("dev")},
            test={s: encode(s) for s in test_names},
            test_examples={s: task.read(s) for s in test_names},
            pad_token_id=tokenizer.token_to_id("[PAD]"),
        )
        task.forget_texts()  # the texts are tokenised; only test ids are kept (for the predictions)
        return data
