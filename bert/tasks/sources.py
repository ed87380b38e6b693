"""Where a task's splits come from, behind one small interface (`TaskSource`), and the file readers.

- `GlueFolder`: a GLUE-layout folder (train.tsv, dev.tsv, test.tsv; MNLI's dev_matched.tsv, ...);
- `LocalFiles`: custom TSV/CSV/JSONL/Parquet files for train, validation and test;
- `HubDataset`: a Hugging Face dataset such as 'glue/mrpc' (needs a network or a local cache);
- `Synthetic`: the built-in same-topic task (pairs from `bert.data.synthetic`), no files at all.

`source_for(cfg)` is the one place that picks the source of a `TaskConfig`. GLUE files are tab separated with
literal quotes (a `"` is text, never a quote character), so they are read with `csv.QUOTE_NONE`.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bert.config import TaskConfig
from bert.data.records import hub_name
from bert.errors import UserError
from bert.tasks.examples import PairExamples
from bert.tasks.spec import TaskSpec

_HF_SPLITS = {
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
}


@dataclass
class Table:
    """A split as columns, before the task turns them into examples (labels, column names)."""

    columns: dict[str, list[Any]]
    source: str  # the file (or dataset) read, for messages
    line_numbers: list[int] | None = None  # the file line of each row (text formats)
    require_labels: bool = True  # test splits may come without
    glue: bool = False  # the columns of a GLUE-layout file of the task
    hub: bool = False  # a Hugging Face dataset's columns (label ids, its own column names)
    malformed: int = 0  # rows left out (QQP)


class TaskSource:
    """Where the splits of a task are: what they are called, whether each exists, and how to read one."""

    def split_names(self, kind: str, spec: TaskSpec) -> list[str]:
        """The splits behind 'dev' or 'test' (GLUE's MNLI: dev_matched and dev_mismatched)."""
        return [kind]

    def has_split(self, split: str) -> bool:
        raise NotImplementedError

    def read(self, split: str, spec: TaskSpec) -> Table | PairExamples:
        raise NotImplementedError

    def table(self, split: str) -> dict[str, list[Any]] | None:
        """The raw columns of a file-based split (None for other sources)."""
        return None


class GlueFolder(TaskSource):
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def split_names(self, kind: str, spec: TaskSpec) -> list[str]:
        return list(spec.dev_splits if kind == "dev" else spec.test_splits)

    def path(self, split: str) -> Path:
        return self.folder / f"{split}.tsv"

    def has_split(self, split: str) -> bool:
        return self.path(split).is_file()

    def read(self, split: str, spec: TaskSpec) -> Table:
        return _read_file(self.path(split), split, spec, glue=True)

    def table(self, split: str) -> dict[str, list[Any]] | None:
        return read_table(self.path(split))[0] if self.has_split(split) else None


class LocalFiles(TaskSource):
    def __init__(self, cfg: TaskConfig) -> None:
        base = Path(cfg.data_dir) if cfg.data_dir else None
        files = {"train": cfg.train_file, "dev": cfg.validation_file, "test": cfg.test_file}
        self.files = {
            split: (base / name if base is not None and not Path(name).is_absolute() else Path(name))
            for split, name in files.items()
            if name is not None
        }

    def has_split(self, split: str) -> bool:
        return split in self.files and self.files[split].is_file()

    def read(self, split: str, spec: TaskSpec) -> Table:
        if split not in self.files:
            what = {"train": "train_file", "dev": "validation_file", "test": "test_file"}.get(split, split)
            raise UserError(
                f"task '{spec.name}': no data for split '{split}' (set task.data_dir or task.{what})"
            )
        return _read_file(self.files[split], split, spec, glue=False)

    def table(self, split: str) -> dict[str, list[Any]] | None:
        return read_table(self.files[split])[0] if self.has_split(split) else None


class HubDataset(TaskSource):
    def __init__(self, name: str) -> None:
        self.name = name

    def split_names(self, kind: str, spec: TaskSpec) -> list[str]:
        return list(spec.dev_splits if kind == "dev" else spec.test_splits)

    def has_split(self, split: str) -> bool:
        return _HF_SPLITS.get(split, split) in _hf_split_names(self.name)

    def read(self, split: str, spec: TaskSpec) -> Table:

        hf_split = _HF_SPLITS.get(split, split)
        try:
            data = _load_hub_split(self.name, hf_split)
        except Exception as err:  # noqa: BLE001 - network, cache and naming errors all end here
            raise UserError(f"hf dataset '{self.name}' split '{hf_split}': {err}") from None
        columns = {name: data[name] for name in data.column_names}
        return Table(columns, f"{self.name}[{hf_split}]", require_labels=False, hub=True)


class Synthetic(TaskSource):
    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg

    def has_split(self, split: str) -> bool:
        return split in ("train", "dev", "test")

    def read(self, split: str, spec: TaskSpec) -> PairExamples:
        return read_synthetic(self.cfg, split)


def _read_file(path: Path, split: str, spec: TaskSpec, glue: bool) -> Table:
    """A split's file: its columns read, labels required except in test splits, malformed rows counted."""
    if not path.is_file():
        raise UserError(f"{path}: file not found (split '{split}' of task '{spec.name}')")
    columns, lines, malformed = read_table(path, skip_malformed=spec.skip_malformed)
    return Table(columns, str(path), lines, not split.startswith("test"), glue=glue, malformed=malformed)


def source_for(cfg: TaskConfig) -> TaskSource:
    """The source of a task's config: a hub dataset, custom files, a GLUE folder, or the synthetic task."""
    if cfg.hf_dataset:
        return HubDataset(cfg.hf_dataset)
    if cfg.train_file is not None or cfg.validation_file is not None or cfg.test_file is not None:
        return LocalFiles(cfg)
    if cfg.data_dir is not None:
        return GlueFolder(cfg.data_dir)
    if cfg.name == "synthetic":
        return Synthetic(cfg)
    return LocalFiles(cfg)  # nothing given: reading says which key to set


def _saved_to_disk(path: str) -> bool:
    """A folder written by `datasets.save_to_disk` (a DatasetDict)."""
    return (Path(path) / "dataset_dict.json").is_file()


def _load_hub_split(name: str, split: str) -> Any:
    """One split of `task.hf_dataset`: NAME[:CONFIG] on the hub or in its cache, or a local folder."""
    import datasets

    if _saved_to_disk(name):
        return datasets.load_from_disk(name)[split]
    path, config = hub_name(name)
    return datasets.load_dataset(path, config, split=split)


def _hf_split_names(name: str) -> list[str]:
    """Split names of a Hugging Face dataset (`hub_name`'s syntax); [] when unknown."""
    import datasets

    try:
        if _saved_to_disk(name):
            return list(datasets.load_from_disk(name))
        path, config = hub_name(name)
        return list(datasets.get_dataset_split_names(path, config))
    except Exception:  # noqa: BLE001 - offline or unknown: then only train and dev are read
        return []


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
            if len(row) != len(header):  # more fields: a tab inside a sentence would shift the columns
                if skip_malformed:
                    malformed += 1
                    continue
                hint = " (a tab inside a field?)" if len(row) > len(header) else ""
                raise UserError(
                    f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}{hint}"
                )
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
