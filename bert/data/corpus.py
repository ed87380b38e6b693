"""Corpus readers: text files, folders, globs, JSONL/CSV/Parquet, HF datasets -> documents of sentences.

Everything here streams: `iter_documents` yields one `Document` at a time, never the corpus as a list, so
memory is bounded by the largest document (for free text a file is one document, e.g. one book).

Text layouts (decided per file when `layout` is 'auto', see `detect_layout`):

- google: one sentence a line, a blank line between documents (the layout of Google's BERT data).
- free: prose. Hard-wrapped lines are joined into paragraphs (a blank line ends a paragraph); a file whose
  lines are long is read as one paragraph a line. Paragraphs are split into sentences by `split_sentences`.
  The file is one document (paragraph breaks are not document breaks) unless `document_per_file` is False.

`document_per_file=True` makes every file one document whatever its layout; None keeps each layout's default.

The parts: `documents.py` (what a reader yields and counts, reading lines), `sentences.py` (the rule-based
sentence splitter and why it is rule based), `records.py` (JSONL, CSV/TSV, Parquet, Hugging Face datasets);
this file reads text files and resolves `data.corpus` into inputs.

Bad input raises `bert.errors.UserError` with one line naming the file: a missing path, a binary file, a JSONL
or CSV file without the text column, invalid UTF-8 in strict mode (with the line number), an empty corpus.
Invalid UTF-8 is replaced by U+FFFD by default and counted per file. A line longer than `MAX_LINE_BYTES`
(1 MiB) is skipped and reported by file and line number. Decision: such a line is almost never prose (minified
data, base64, a dump); failing a long prepare for it would be worse, and reading it whole could exhaust memory.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bert.data.documents import CorpusStats, Document, LineReader, format_suffix
from bert.data.records import csv_documents, hf_documents, jsonl_documents, parquet_documents
from bert.data.sentences import split_sentences
from bert.errors import UserError

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst"}
"""Extensions read as text when a folder is expanded (a file named explicitly is read whatever its name).
Any of these (but Parquet) may be gzip-compressed: "wiki.txt.gz", "docs.jsonl.gz"."""
TABLE_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
"""Files that mark a folder written by `datasets.save_to_disk`."""

Layout = Literal["auto", "google", "free"]


# ------------------------------------------------------------------------------------------------- layouts


def detect_layout(lines: list[str]) -> str:
    """Guess 'google' or 'free' from the first lines of a file; returns 'google', 'free' or 'wrapped'.

    'wrapped' is free text with hard-wrapped lines (most lines 30-90 characters, few ending a sentence);
    'google' is one sentence a line (few lines hold two sentences); anything else is one paragraph a line.
    """
    lines = [line.strip() for line in lines if line.strip()]
    if not lines:
        return "google"
    lengths = sorted(len(line) for line in lines)
    p90 = lengths[int(0.9 * (len(lengths) - 1))]
    ends_sentence = sum(line.endswith((".", "!", "?", '"', "'", "\u201d")) for line in lines) / len(lines)
    if p90 <= 90 and ends_sentence < 0.6 and len(lines) >= 5:
        return "wrapped"
    multi = sum(len(split_sentences(line)) > 1 for line in lines) / len(lines)
    return "google" if multi < 0.15 else "free"


def _text_documents(
    path: Path, layout: str, document_per_file: bool | None, stats: CorpusStats, errors: str
) -> Iterator[Document]:
    reader = LineReader(path, stats, errors)
    if layout == "auto":
        layout = detect_layout(list(reader.lines(limit=400)))
    elif layout == "free":
        layout = "wrapped" if detect_layout(list(reader.lines(limit=400))) == "wrapped" else "free"
    stats.layouts[str(path)] = {"google": "google", "wrapped": "free (hard-wrapped)", "free": "free"}[layout]
    source = str(path)
    if layout == "google":
        split_docs = document_per_file is not True
        sentences: list[str] = []
        for line in reader.lines():
            line = line.strip()
            if line:
                sentences.append(line)
            elif split_docs and sentences:
                yield Document(sentences, source)
                sentences = []
        if sentences:
            yield Document(sentences, source)
        return
    # Free text: paragraphs -> sentences; by default the whole file is one document.
    split_docs = document_per_file is False
    sentences = []
    paragraph: list[str] = []
    for line in reader.lines():
        line = line.strip()
        if layout == "wrapped" and line:
            paragraph.append(line)
            continue
        if paragraph:
            sentences.extend(split_sentences(" ".join(paragraph)))
            paragraph = []
        if line:
            sentences.extend(split_sentences(line))
        elif split_docs and sentences:
            yield Document(sentences, source)
            sentences = []
    if paragraph:
        sentences.extend(split_sentences(" ".join(paragraph)))
    if sentences:
        yield Document(sentences, source)


# ---------------------------------------------------------------------------------------------- resolving


@dataclass
class CorpusInput:
    """One resolved input: a file, a saved HF dataset folder, or a hub dataset name, and its format."""

    path: str
    format: str

    def fingerprint(self) -> dict:
        """Path, size and modification time: what the prepare cache key reads (no file content is hashed)."""
        entry = {"path": self.path, "format": self.format}
        target = Path(self.path)
        if target.is_file():
            stat = target.stat()
            entry.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        elif target.is_dir():
            files = sorted(p for p in target.rglob("*") if p.is_file())
            entry.update(
                size=sum(p.stat().st_size for p in files),
                mtime_ns=max((p.stat().st_mtime_ns for p in files), default=0),
            )
        return entry


def _format_of(path: Path, fmt: str) -> str | None:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "hf" if any((path / m).exists() for m in HF_MARKERS) else None
    suffix = format_suffix(path)
    if suffix in TABLE_SUFFIXES:
        return TABLE_SUFFIXES[suffix]
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return "text"


def resolve_inputs(
    corpus: list[str], fmt: str = "auto", stats: CorpusStats | None = None
) -> list[CorpusInput]:
    """Expand files, folders (recursively, known extensions only) and globs into a sorted list of inputs."""
    stats = stats if stats is not None else CorpusStats()
    inputs: list[CorpusInput] = []
    for entry in corpus:
        if entry.startswith("hf:"):
            inputs.append(CorpusInput(entry, "hf"))
            continue
        expanded = os.path.expanduser(entry)
        if glob.has_magic(expanded):
            matches = sorted(glob.glob(expanded, recursive=True))
            if not matches:
                raise UserError(f"{entry}: the pattern matches no file (data.corpus)")
            paths = [Path(m) for m in matches]
        else:
            path = Path(expanded)
            if not path.exists():
                if fmt == "hf":
                    inputs.append(CorpusInput(entry, "hf"))
                    continue
                raise UserError(f"{entry}: no such file or folder (data.corpus)")
            paths = [path]
        for path in paths:
            kind = _format_of(path, fmt)
            if path.is_dir() and kind != "hf":
                inputs.extend(_expand_folder(path, fmt, stats))
            elif path.is_file() or kind == "hf":
                inputs.append(CorpusInput(str(path), kind or "text"))
    return inputs


def _expand_folder(folder: Path, fmt: str, stats: CorpusStats) -> list[CorpusInput]:
    inputs = []
    known = TEXT_SUFFIXES | set(TABLE_SUFFIXES) | PARQUET_SUFFIXES
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        if format_suffix(path) not in known:
            stats.skipped_files.append(str(path))  # README, LICENSE, images: not corpus text
            continue
        inputs.append(CorpusInput(str(path), _format_of(path, fmt) or "text"))
    return inputs


def iter_documents(
    inputs: list[CorpusInput],
    stats: CorpusStats,
    layout: str = "auto",
    document_per_file: bool | None = None,
    text_column: str = "text",
    encoding_errors: str = "replace",
    trust_remote_code: bool = False,
) -> Iterator[Document]:
    """Stream the documents of every input in order, counting into `stats`. Empty documents are dropped."""
    for item in inputs:
        stats.files += 1
        path = Path(item.path)
        if item.format == "text":
            docs = _text_documents(path, layout, document_per_file, stats, encoding_errors)
        elif item.format == "jsonl":
            docs = jsonl_documents(path, text_column, stats, encoding_errors)
        elif item.format == "csv":
            docs = csv_documents(path, text_column, stats, encoding_errors)
        elif item.format == "parquet":
            docs = parquet_documents(path, text_column, stats)
        elif item.format == "hf":
            docs = hf_documents(item.path, text_column, stats, trust_remote_code)
        else:
            raise UserError(f"{item.path}: unknown format {item.format!r}")
        for doc in docs:
            stats.documents += 1
            stats.sentences += len(doc.sentences)
            yield doc
