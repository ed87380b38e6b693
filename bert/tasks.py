"""Sentence-pair tasks: what each GLUE task is, and readers that turn its files into `PairExamples`.

This file owns:
- `TaskSpec` and `GLUE_TASKS`: labels, metrics and column names of MRPC, RTE, STS-B, QQP, MNLI, QNLI, WNLI;
- `Task` (`load_task(cfg)`): a task resolved from a `TaskConfig`, reading its splits on demand from
  a GLUE-layout folder, custom CSV/TSV/JSONL/Parquet files with a column mapping, a Hugging Face dataset,
  or the built-in synthetic task (same-topic sentence pairs from `bert.data.synthetic`);
- `build_synthetic_pairs`: the pure, seeded pair builder behind the synthetic task.

GLUE files are tab separated with literal quotes (a `"` is text, never a quote character), so they are read
with `csv.QUOTE_NONE`. Every problem a user can fix (a missing file or column, a label outside the task's
labels, an empty split) raises `UserError` with one line naming the file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bert.config import TaskConfig
from bert.errors import UserError


@dataclass(frozen=True)
class TaskSpec:
    """A task's fixed definition; the column names are those of its GLUE files."""

    name: str
    labels: tuple[str, ...] | None  # None: regression (one output)
    metrics: tuple[str, ...]
    main_metric: str
    text_a: str
    text_b: str
    label: str
    index: str = "index"  # id column of test.tsv, written back in the submission file
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    hf_columns: tuple[str, str] = ("sentence1", "sentence2")
    skip_malformed: bool = False  # QQP's train.tsv has a few rows with missing fields; GLUE skips them

    @property
    def is_regression(self) -> bool:
        return self.labels is None


GLUE_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            "mrpc", ("0", "1"), ("accuracy", "f1"), "f1", "#1 String", "#2 String", "Quality", index="index"
        ),
        TaskSpec(
            "rte",
            ("entailment", "not_entailment"),
            ("accuracy",),
            "accuracy",
            "sentence1",
            "sentence2",
            "label",
        ),
        TaskSpec("stsb", None, ("pearson", "spearman"), "pearson", "sentence1", "sentence2", "score"),
        TaskSpec(
            "qqp",
            ("0", "1"),
            ("accuracy", "f1"),
            "f1",
            "question1",
            "question2",
            "is_duplicate",
            index="id",
            hf_columns=("question1", "question2"),
            skip_malformed=True,
        ),
        TaskSpec(
            "mnli",
            ("entailment", "neutral", "contradiction"),  # the order of the Hugging Face `glue/mnli` labels
            ("accuracy",),
            "accuracy",
            "sentence1",
            "sentence2",
            "gold_label",
            dev_splits=("dev_matched", "dev_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
            hf_columns=("premise", "hypothesis"),
        ),
        TaskSpec(
            "qnli",
            ("entailment", "not_entailment"),
            ("accuracy",),
            "accuracy",
            "question",
            "sentence",
            "label",
            hf_columns=("question", "sentence"),
        ),
        TaskSpec("wnli", ("0", "1"), ("accuracy",), "accuracy", "sentence1", "sentence2", "label"),
        TaskSpec("synthetic", ("0", "1"), ("accuracy", "f1"), "accuracy", "sentence1", "sentence2", "label"),
    ]
}
"""Built-in tasks by name. Label order follows the Hugging Face `glue` datasets, so their ids map directly."""

_CUSTOM_COLUMNS = ("sentence1", "sentence2", "label", "index")

_HF_SPLITS = {
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
}


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


@dataclass
class Task:
    """A task resolved from its config: definition plus where each split's data comes from."""

    config: TaskConfig
    spec: TaskSpec
    labels: list[str] | None  # None: regression
    _cache: dict[str, PairExamples] = field(default_factory=dict, repr=False)

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
        if kind == "train":
            return ["train"]
        if self._uses_glue_folder() or self.config.hf_dataset:
            return list(self.spec.dev_splits if kind == "dev" else self.spec.test_splits)
        return [kind]

    def has_split(self, split: str) -> bool:
        """Whether the split exists (test sets are optional)."""
        if self.config.hf_dataset:
            return _HF_SPLITS.get(split, split) in _hf_split_names(self.config.hf_dataset)
        if self.config.name == "synthetic" and not (self.config.data_dir or self.config.train_file):
            return True
        return self._split_path(split) is not None and self._split_path(split).is_file()

    def forget_texts(self) -> None:
        """Drop the splits read so far (their tokenised form is what training keeps)."""
        self._cache.clear()

    def read(self, split: str) -> PairExamples:
        """The examples of one split, read once and kept."""
        if split not in self._cache:
            examples = self._read(split)
            if len(examples) == 0:
                raise UserError(f"{examples.source}: split '{split}' has no examples")
            self._cache[split] = examples
        return self._cache[split]

    # ---------------------------------------------------------------------------------------- sources

    def _uses_glue_folder(self) -> bool:
        return self.config.data_dir is not None and self.config.train_file is None

    def _split_path(self, split: str) -> Path | None:
        cfg = self.config
        if self._uses_glue_folder():
            return Path(cfg.data_dir) / f"{split}.tsv"
        files = {"train": cfg.train_file, "dev": cfg.validation_file, "test": cfg.test_file}
        name = files.get(split)
        if name is None:
            return None
        path = Path(name)
        return Path(cfg.data_dir) / path if cfg.data_dir and not path.is_absolute() else path

    def _read(self, split: str) -> PairExamples:
        cfg = self.config
        if cfg.name == "synthetic" and not (cfg.data_dir or cfg.train_file or cfg.hf_dataset):
            return read_synthetic(cfg, split)
        if cfg.hf_dataset:
            return self._read_hf(split)
        path = self._split_path(split)
        if path is None:
            what = {"train": "train_file", "dev": "validation_file", "test": "test_file"}.get(split, split)
            raise UserError(
                f"task '{cfg.name}': no data for split '{split}' (set task.data_dir or task.{what})"
            )
        if not path.is_file():
            raise UserError(f"{path}: file not found (split '{split}' of task '{cfg.name}')")
        columns, line_numbers, malformed = read_table(path, skip_malformed=self.spec.skip_malformed)
        examples = self._from_columns(
            columns, str(path), line_numbers, require_labels=not split.startswith("test")
        )
        examples.skipped = malformed
        return examples

    def _read_hf(self, split: str) -> PairExamples:
        import datasets  # lazy: only this source needs it

        name, _, subset = self.config.hf_dataset.partition("/")
        hf_split = _HF_SPLITS.get(split, split)
        try:
            data = datasets.load_dataset(name, subset or None, split=hf_split)
        except Exception as err:  # noqa: BLE001 - network, cache and naming errors all end here
            raise UserError(f"hf dataset '{self.config.hf_dataset}' split '{hf_split}': {err}") from None
        return self.from_hf_dataset(data, f"{self.config.hf_dataset}[{hf_split}]")

    def from_hf_dataset(self, data: Any, source: str) -> PairExamples:
        """Examples from a `datasets.Dataset`; integer class labels are ids already (-1: no label)."""
        columns = {name: data[name] for name in data.column_names}
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
        return self._from_columns(
            columns, source, None, require_labels=False, defaults=(a, b, label_column, "index")
        )

    def _from_columns(
        self,
        columns: dict[str, list[Any]],
        source: str,
        line_numbers: list[int] | None,
        require_labels: bool,
        defaults: tuple[str, str, str, str] | None = None,
    ) -> PairExamples:
        cfg, spec = self.config, self.spec
        if defaults is None:
            # A GLUE folder has the task's own column names; custom files default to sentence1/sentence2/label.
            glue = self._uses_glue_folder() and self.name in GLUE_TASKS
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


def _hf_split_names(name: str) -> list[str]:
    """Split names of a Hugging Face dataset ('glue/mrpc': dataset glue, config mrpc); [] when unknown."""
    import datasets

    path, _, subset = name.partition("/")
    try:
        return list(datasets.get_dataset_split_names(path, subset or None))
    except Exception:  # noqa: BLE001 - offline or unknown: then only train and dev are read
        return []


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


def _raw_labels(task: Task) -> set[str]:
    path = task._split_path("train")
    if path is None or not path.is_file():
        raise UserError(f"task '{task.name}': set task.labels, or a train file to read them from")
    columns, _, _ = read_table(path)
    column = task.config.label_column or "label"
    if column not in columns:
        raise UserError(f"{path}: no label column '{column}' (columns: {', '.join(columns)})")
    return {_label_key(v) for v in columns[column]}


# --------------------------------------------------------------------------------------------- readers


def read_table(
    path: Path, skip_malformed: bool = False
) -> tuple[dict[str, list[Any]], list[int] | None, int]:
    """Columns of a TSV, CSV, JSONL or Parquet file, the file line of each row (text formats) and the
    number of malformed rows skipped (TSV with `skip_malformed`)."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".txt", ".csv"):
        return _read_delimited(path, "," if suffix == ".csv" else "\t", skip_malformed)
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path), None, 0
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pydict(), None, 0
        except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
            raise UserError(f"{path}: not a readable Parquet file ({err})") from None
    raise UserError(f"{path}: unknown file type '{suffix}' (use .tsv, .csv, .jsonl or .parquet)")


def _read_delimited(
    path: Path, delimiter: str, skip_malformed: bool
) -> tuple[dict[str, list[Any]], list[int], int]:
    # TSV: quotes are literal text (GLUE); CSV: standard quoting, so a field may hold commas.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: MRPC's files start with a BOM
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path}: the file is empty (no header line)")
        header = [h.strip() for h in header]
        columns: dict[str, list[Any]] = {h: [] for h in header}
        lines: list[int] = []
        malformed = 0
        for row in reader:
            if not row:
                continue
            if len(row) < len(header):
                if skip_malformed:
                    malformed += 1
                    continue
                raise UserError(f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}")
            for name, value in zip(header, row):
                columns[name].append(value)
            lines.append(reader.line_num)
    return columns, lines, malformed


def _read_jsonl(path: Path) -> dict[str, list[Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {name: [row.get(name) for row in rows] for name in names}


# ----------------------------------------------------------------------------------------- synthetic


def build_synthetic_pairs(
    documents: list[Any], num_pairs: int, rng: random.Random
) -> tuple[list[str], list[str], list[int]]:
    """Sentence pairs labelled 1 when both sentences come from documents of the same topic, else 0.

    Half the pairs are positive. The second sentence always comes from another document, so the model
    must judge the topic, not spot a shared document.
    """
    by_topic: dict[int, list[int]] = {}
    for i, doc in enumerate(documents):
        if doc.sentences:
            by_topic.setdefault(doc.topic, []).append(i)
    usable = [i for docs in by_topic.values() for i in docs]
    topics = sorted(by_topic)
    if len(topics) < 2 or not any(len(d) > 1 for d in by_topic.values()):
        raise UserError("synthetic task: need at least two topics with two documents each")
    text_a, text_b, labels = [], [], []
    while len(labels) < num_pairs:
        first = rng.choice(usable)
        topic = documents[first].topic
        same = rng.random() < 0.5
        if same:
            candidates = [i for i in by_topic[topic] if i != first]
            if not candidates:
                continue
        else:
            candidates = by_topic[rng.choice([t for t in topics if t != topic])]
        second = rng.choice(candidates)
        text_a.append(rng.choice(documents[first].sentences))
        text_b.append(rng.choice(documents[second].sentences))
        labels.append(int(same))
    return text_a, text_b, labels


def read_synthetic(cfg: TaskConfig, split: str) -> PairExamples:
    """The synthetic same-topic task: documents split 80/10/10 by index, pairs built inside each split."""
    from bert.data.synthetic import synthetic_documents

    documents = synthetic_documents(cfg.synthetic.num_documents, cfg.synthetic.seed)
    part = {"train": range(0, 8), "dev": range(8, 9), "test": range(9, 10)}.get(split)
    if part is None:
        raise UserError(f"synthetic task: unknown split '{split}' (train, dev, test)")
    chosen = [doc for i, doc in enumerate(documents) if i % 10 in part]
    num_pairs = cfg.synthetic_pairs if split == "train" else max(cfg.synthetic_pairs // 5, 1)
    rng = random.Random(f"{cfg.synthetic.seed}-{split}")
    text_a, text_b, labels = build_synthetic_pairs(chosen, num_pairs, rng)
    return PairExamples(
        text_a,
        text_b,
        np.asarray(labels, dtype=np.int64),
        [str(i) for i in range(len(labels))],
        f"synthetic[{split}]",
    )
