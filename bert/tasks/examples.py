"""`PairExamples`: one split of a sentence-pair task, as parallel lists (what every source turns into)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PairExamples:
    """One split of a pair task: parallel lists, label ids (classification) or scores (regression)."""

    text_a: list[str]
    text_b: list[str]
    labels: np.ndarray | None  # (N,) int64 class ids or float32 scores; None when the split has no labels
    ids: list[str]  # the id each prediction is written under (GLUE's index column, else the row number)
    source: str  # the file (or dataset) read, for messages
    skipped: int = 0  # malformed rows left out (QQP)

    def __len__(self) -> int:
        return len(self.text_a)
