"""A task resolved from its config (`load_task`): its definition, its labels and metrics, and its splits read
on demand from its source (bert/tasks/sources.py) into `PairExamples`.

Every problem a user can fix (a missing file or column, a label outside the task's labels, an empty split)
raises `UserError` with one line naming the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bert.config import TaskConfig
from bert.errors import UserError
from bert.tasks.examples import PairExamples
from bert.tasks.sources import Table, TaskSource, source_for
from bert.tasks.spec import GLUE_TASKS, TaskSpec

_CUSTOM_COLUMNS = ("sentence1", "sentence2", "label", "index")


@dataclass
class Task:
    """A task resolved from its config: definition plus where each split's data comes from."""

    config: TaskConfig
    spec: TaskSpec
    labels: list[str] | None  # None: regression
    source: TaskSource = field(default=None, repr=False)  # type: ignore[assignment]
    _cache: dict[str, PairExamples] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = source_for(self.config)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def main_metric(self) -> str:
        return self.config.metric or self.spec.main_metric

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.spec.metrics, self.main_metric)))

    def split_names(self, kind: str) -> list[str]:
        """The splits behind 'train', 'dev' or 'test' (MNLI: dev_matched and dev_mismatched)."""
        return ["train"] if kind == "train" else self.source.split_names(kind, self.spec)

    def has_split(self, split: str) -> bool:
        """Whether the split exists (test sets are optional)."""
        return self.source.has_split(split)

    def forget_texts(self) -> None:
        """Drop the splits read so far (their tokenised form is what training keeps)."""
        self._cache.clear()

    def read(self, split: str) -> PairExamples:
        """The examples of one split, read once and kept."""
        if split not in self._cache:
            data = self.source.read(split, self.spec)
            examples = data if isinstance(data, PairExamples) else self.from_table(data)
            if len(examples) == 0:
                raise UserError(f"{examples.source}: split '{split}' has no examples")
            self._cache[split] = examples
        return self._cache[split]

    def from_table(self, table: Table) -> PairExamples:
        """Examples from a split's columns (a file's, or a hub dataset's)."""
        if table.hub:
            return self.from_hf_columns(dict(table.columns), table.source)
        examples = self.from_columns(
            table.columns, table.source, table.line_numbers, table.require_labels, glue=table.glue
        )
        examples.skipped = table.malformed
        return examples

    def from_hf_dataset(self, data: Any, source: str) -> PairExamples:
        """Examples from a `datasets.Dataset` (see from_hf_columns)."""
        return self.from_hf_columns({name: data[name] for name in data.column_names}, source)

    def from_hf_columns(self, columns: dict[str, list[Any]], source: str) -> PairExamples:
        """Examples from a Hugging Face dataset's columns; integer class labels are ids already (-1: none)."""
        label_column = self.config.label_column or "label"
        values = columns.get(label_column)
        if values is not None and self.labels is not None and all(isinstance(v, int) for v in values):
            if all(v < 0 for v in values):
                columns.pop(label_column)  # GLUE test splits carry -1 everywhere
            else:
                bad = next((v for v in values if not 0 <= v < len(self.labels)), None)
                if bad is not None:
                    raise UserError(
                        f"{source}: label id {bad} is outside the task's {len(self.labels)} labels"
                    )
                columns[label_column] = [self.labels[v] for v in values]
        if "idx" in columns and self.config.label_column != "idx":
            columns.setdefault("index", columns["idx"])
        a, b = self.spec.hf_columns
        return self.from_columns(columns, source, None, False, defaults=(a, b, label_column, "index"))

    def from_columns(
        self,
        columns: dict[str, list[Any]],
        source: str,
        line_numbers: list[int] | None,
        require_labels: bool,
        glue: bool = False,
        defaults: tuple[str, str, str, str] | None = None,
    ) -> PairExamples:
        """Examples from a split's columns; `glue`: the columns of a GLUE-layout file of the task."""
        cfg, spec = self.config, self.spec
        if defaults is None:
            # A GLUE folder has the task's own column names; custom files default to sentence1/sentence2/label.
            glue = glue and self.name in GLUE_TASKS
            defaults = (spec.text_a, spec.text_b, spec.label, spec.index) if glue else _CUSTOM_COLUMNS
        if defaults == _CUSTOM_COLUMNS and spec.text_a in columns:
            defaults = (spec.text_a, spec.text_b, spec.label, spec.index)  # custom files with GLUE's columns
        a_col = cfg.text_a_column or defaults[0]
        b_col = cfg.text_b_column or defaults[1]
        label_col = cfg.label_column or defaults[2]
        for column in (a_col, b_col):
            if column not in columns:
                raise UserError(
                    f"{source}: no column '{column}' (columns: {', '.join(map(str, columns)) or 'none'})"
                )
        if label_col not in columns and require_labels:
            raise UserError(
                f"{source}: no label column '{label_col}' (columns: {', '.join(map(str, columns)) or 'none'})"
            )
        n = len(columns[a_col])
        index_col = next((c for c in (defaults[3], "index", "id", "idx") if c in columns), None)
        ids = [str(v) for v in columns[index_col]] if index_col else [str(i) for i in range(n)]
        labels = None
        if label_col in columns:
            labels = self._label_array(columns[label_col], source, line_numbers)
        return PairExamples(
            text_a=[_text(v) for v in columns[a_col]],
            text_b=[_text(v) for v in columns[b_col]],
            labels=labels,
            ids=ids,
            source=source,
        )

    def _label_array(self, values: list[Any], source: str, line_numbers: list[int] | None) -> np.ndarray:
        def where(i: int) -> str:
            return f"{source}:{line_numbers[i]}" if line_numbers else f"{source} (row {i})"

        if self.labels is None:
            out = np.empty(len(values), dtype=np.float32)
            for i, v in enumerate(values):
                try:
                    out[i] = float(v)
                except (TypeError, ValueError):
                    raise UserError(
                        f"{where(i)}: label {v!r} is not a number (task '{self.name}' is regression)"
                    ) from None
            return out
        index = {name: i for i, name in enumerate(self.labels)}
        out = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            key = _label_key(v)
            if key not in index:
                raise UserError(
                    f"{where(i)}: label {key!r} is not one of the task's labels ({', '.join(self.labels)})"
                )
            out[i] = index[key]
        return out


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _label_key(value: Any) -> str:
    """Labels are compared as strings; 1, 1.0 and '1' are the same label."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def load_task(cfg: TaskConfig, labels: list[str] | None = None) -> Task:
    """Resolve a `TaskConfig`; `labels` (e.g. from a saved model) fills in a custom task's labels."""
    name = cfg.name.lower()
    spec = GLUE_TASKS.get(name)
    if spec is None:
        _check_custom_name(cfg, name)
        spec = TaskSpec(name, (), (), "accuracy", "sentence1", "sentence2", "label")  # labels from the data
    is_regression = spec.is_regression if cfg.is_regression is None else cfg.is_regression
    task_labels: list[str] | None = None
    if not is_regression:
        task_labels = list(cfg.labels or spec.labels or labels or [])
    task = Task(cfg, spec, task_labels)
    if task_labels == []:
        # A custom classification task without labels: the sorted label values of the training split.
        task.labels = sorted(_raw_labels(task))
    metrics = spec.metrics
    if not metrics:  # a custom task: F1 of the second label too when there are two
        binary = task.labels is not None and len(task.labels) == 2
        metrics = (
            ("pearson", "spearman") if is_regression else ("accuracy", "f1") if binary else ("accuracy",)
        )
    main = spec.main_metric if spec.metrics else metrics[0]
    labels = None if task.labels is None else tuple(task.labels)
    task.spec = dataclasses.replace(spec, metrics=metrics, main_metric=main, labels=labels)
    return task


def _check_custom_name(cfg: TaskConfig, name: str) -> None:
    """A name one typo away from a GLUE task, with none of a custom task's settings, is a misspelling."""
    import difflib

    close = difflib.get_close_matches(name, list(GLUE_TASKS), n=1, cutoff=0.7)
    custom = (cfg.labels, cfg.is_regression, cfg.text_a_column, cfg.text_b_column, cfg.label_column)
    if close and all(v is None for v in custom) and name != "synthetic":
        raise UserError(
            f"task.name={cfg.name}: not a GLUE task; did you mean '{close[0]}'? (a custom task of that name "
            "also sets task.labels or task.is_regression)"
        )


def _raw_labels(task: Task) -> set[str]:
    columns = task.source.table("train")
    if columns is None:
        raise UserError(f"task '{task.name}': set task.labels, or a train file to read them from")
    column = task.config.label_column or "label"
    if column not in columns:
        raise UserError(
            f"task '{task.name}' train split: no label column '{column}' (columns: {', '.join(columns)})"
        )
    return {_label_key(v) for v in columns[column]}
