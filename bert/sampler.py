"""The pretraining data order: `ShardedBatchSampler`, the data position of pretraining, and `EpochDataset`.

Each epoch is a permutation of the training examples drawn from (seed, epoch) alone; the global micro-batch j
of that epoch is the slice perm[j*G : (j+1)*G] with G = batch_size x num_processes, and process r takes the
r-th `batch_size` part of it.
Hence:
- processes read disjoint examples, and N processes of batch b read exactly what one process of batch N*b
  reads (the union, in the same order);
- an optimizer step of k micro-batches takes the examples perm[s*S : (s+1)*S], S = batch_size x processes x
  k (the global batch), whatever the split of S into those three: so a run resumes on another number of
  processes, per-device batch or accumulation with the same examples in every step, as long as S stays;
  `examples_done` / `index_for` convert the position between splits;
- the position is two integers (epoch, index of the next micro-batch), saved in checkpoints; resuming
  starts the sampler there, without iterating over the data already seen;
- the sampler yields (epoch, example index) pairs, so each example carries its epoch to the collator, whose
  dynamic masking is a pure function of (seed, epoch, example id): nothing else needs saving.
The last incomplete global batch of an epoch (S examples, all its micro-batches) is dropped, so every process
takes the same number of steps and every split of S sees the same epochs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch `epoch`: a permutation that depends on (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


class ShardedBatchSampler:
    """Endless micro-batches of (epoch, index) pairs for process `rank`, starting at a saved position."""

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        num_processes: int = 1,
        rank: int = 0,
        seed: int = 0,
        epoch: int = 0,
        start: int = 0,
        accumulation: int = 1,
    ) -> None:
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.accumulation = accumulation
        self.num_processes = num_processes
        self.rank = rank
        self.seed = seed
        self.epoch = epoch
        self.start = start
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{num_examples} training examples cannot fill one global batch of {batch_size} x "
                f"{num_processes} processes x {accumulation} accumulation steps"
            )

    @property
    def micro_batch(self) -> int:
        """Examples of one micro-batch over all processes."""
        return self.batch_size * self.num_processes

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches per epoch per process (the incomplete last global batch is dropped)."""
        steps = self.num_examples // (self.micro_batch * self.accumulation)
        return steps * self.accumulation

    def examples_done(self, index: int) -> int:
        """Examples of the epoch consumed (over all processes) before micro-batch `index`."""
        return index * self.micro_batch

    def index_for(self, examples: int) -> int:
        """The micro-batch index at which `examples` of the epoch have been consumed (a whole number of
        micro-batches of this split: ValueError otherwise)."""
        if examples % self.micro_batch:
            raise ValueError(
                f"{examples} examples are not a whole number of micro-batches of {self.micro_batch}"
            )
        return examples // self.micro_batch

    def advance(self, epoch: int, index: int) -> tuple[int, int]:
        """The position after consuming micro-batch (epoch, index)."""
        index += 1
        return (epoch + 1, 0) if index >= self.batches_per_epoch else (epoch, index)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = self.epoch, self.start
        global_batch = self.batch_size * self.num_processes
        while True:
            perm = epoch_permutation(self.num_examples, self.seed, epoch).tolist()
            for j in range(start, self.batches_per_epoch):
                offset = j * global_batch + self.rank * self.batch_size
                yield [(epoch, i) for i in perm[offset : offset + self.batch_size]]
            epoch, start = epoch + 1, 0


class EpochDataset(torch.utils.data.Dataset):
    """Wraps a map-style dataset so that key (epoch, i) returns example i with its `epoch` added."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        example = dict(self.dataset[int(index)])
        example["epoch"] = epoch
        return example
