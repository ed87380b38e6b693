"""Corpus readers for records, one document a record: JSONL, CSV/TSV, Parquet and Hugging Face datasets.

Every line of a record's text is a paragraph, split into sentences (sentences.py). A missing text column, a
JSON array instead of JSON lines, or a non-text value is one `UserError` naming the file (and line).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from bert.data.documents import MAX_LINE_BYTES, CorpusStats, Document, LineReader, format_suffix
from bert.data.sentences import split_sentences
from bert.errors import UserError


def _free_text_sentences(text: str) -> list[str]:
    """Sentences of one record's text (JSONL/CSV/Parquet/HF): every line is a paragraph."""
    sentences: list[str] = []
    for line in text.splitlines():
        sentences.extend(split_sentences(line))
    return sentences


def _record_documents(
    texts: Iterable[object], source: str, column: str, stats: CorpusStats
) -> Iterator[Document]:
    for text in texts:
        if text is None:
            continue
        if not isinstance(text, str):
            raise UserError(f"{source}: column '{column}' holds {type(text).__name__}, not text")
        sentences = _free_text_sentences(text)
        if sentences:
            yield Document(sentences, source)


def jsonl_documents(path: Path, column: str, stats: CorpusStats, errors: str) -> Iterator[Document]:
    reader = LineReader(path, stats, errors)

    def texts() -> Iterator[object]:
        for number, line in enumerate(reader.lines(), 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                hint = (
                    " (a JSON array? use JSON lines: one object a line)"
                    if number == 1 and line[0] == "["
                    else ""
                )
                raise UserError(f"{path}: line {number} is not valid JSON: {err.msg}{hint}") from None
            if isinstance(record, list):
                raise UserError(
                    f"{path}: line {number} is a JSON array, not an object; use JSON lines (one object a line)"
                )
            if not isinstance(record, dict) or column not in record:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise UserError(
                    f"{path}: line {number} has no text column '{column}' (found: {keys}); set data.text_column"
                )
            yield record[column]

    yield from _record_documents(texts(), str(path), column, stats)


def csv_documents(path: Path, column: str, stats: CorpusStats, errors: str) -> Iterator[Document]:
    reader = LineReader(path, stats, errors)
    csv.field_size_limit(MAX_LINE_BYTES * 16)
    delimiter = "\t" if format_suffix(path) == ".tsv" else ","
    rows = csv.DictReader(reader.lines(), delimiter=delimiter)
    if rows.fieldnames is None or column not in rows.fieldnames:
        found = ", ".join(rows.fieldnames or [])
        raise UserError(
            f"{path}: no text column '{column}' (found: {found or 'nothing'}); set data.text_column"
        )
    yield from _record_documents((row[column] for row in rows), str(path), column, stats)


def parquet_documents(path: Path, column: str, stats: CorpusStats) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise UserError(f"{path}: not a readable Parquet file ({err})") from None
    names = parquet.schema_arrow.names
    if column not in names:
        raise UserError(
            f"{path}: no text column '{column}' (found: {', '.join(names)}); set data.text_column"
        )

    def texts() -> Iterator[object]:
        for batch in parquet.iter_batches(batch_size=1024, columns=[column]):
            yield from batch.column(0).to_pylist()

    yield from _record_documents(texts(), str(path), column, stats)


def hf_documents(name: str, column: str, stats: CorpusStats, trust_remote_code: bool) -> Iterator[Document]:
    import datasets

    path = Path(name)
    if path.is_dir():
        try:
            data = datasets.load_from_disk(str(path))
        except Exception as err:
            raise UserError(f"{path}: not a dataset saved with datasets.save_to_disk ({err})") from None
        if isinstance(data, datasets.DatasetDict):
            data = data["train"] if "train" in data else data[next(iter(data))]
        names = data.column_names
        if column not in names:
            raise UserError(
                f"{path}: no text column '{column}' (found: {', '.join(names)}); set data.text_column"
            )

        def texts() -> Iterator[object]:
            for batch in data.iter(batch_size=1024):
                yield from batch[column]

        yield from _record_documents(texts(), str(path), column, stats)
        return
    # A hub name "hf:NAME" or "hf:NAME:CONFIG" (hf:Salesforce/wikitext:wikitext-103-raw-v1): needs a network.
    repo, config = hub_name(name.removeprefix("hf:"))
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        data = datasets.load_dataset(repo, config or None, split="train", streaming=True, **kwargs)
    except Exception as err:
        raise UserError(
            f"{name}: cannot load the Hugging Face dataset ({type(err).__name__}: {err})"
        ) from None
    yield from _record_documents((row.get(column) for row in data), name, column, stats)


def hub_name(name: str) -> tuple[str, str | None]:
    """A Hugging Face dataset named `NAME[:CONFIG]` -> (NAME, CONFIG or None). NAME keeps its slashes
    (`nyu-mll/glue:mrpc`, `SetFit/mrpc`, a local folder); the GLUE-style `glue/mrpc` reads as the GLUE
    dataset's `mrpc` configuration."""
    repo, _, config = name.partition(":")
    if not config and repo.startswith("glue/") and repo.count("/") == 1 and not Path(repo).exists():
        return "nyu-mll/glue", repo.split("/", 1)[1]
    return repo, config or None
