"""Corpus readers: text files, folders, globs, JSONL/CSV/Parquet, HF datasets -> documents of sentences.

Everything here streams: `iter_documents` yields one `Document` at a time, never the corpus as a list, so
memory is bounded by the largest document (for free text a file is one document, e.g. one book).

Text layouts (decided per file when `layout` is 'auto', see `detect_layout`):

- google: one sentence a line, a blank line between documents (the layout of Google's BERT data).
- free: prose. Hard-wrapped lines are joined into paragraphs (a blank line ends a paragraph); a file whose
  lines are long is read as one paragraph a line. Paragraphs are split into sentences by `split_sentences`.
  The file is one document (paragraph breaks are not document breaks) unless `document_per_file` is False.

`document_per_file=True` makes every file one document whatever its layout; None keeps each layout's default.

Sentence splitting is rule based (a regular expression proposes boundaries after . ! ? and closing quotes
before a capital letter, digit or opening quote; a few rules reject those after abbreviations such as Mr. Dr.
U.S. e.g., after initials such as "Harry S. Truman", and inside decimals such as 3.5, which never have a space
after the dot). Why not a trained splitter (NLTK punkt, spaCy, a neural model): no extra dependency, no model
download (the machines running this may have no network), fast (about a million sentences a minute in pure
Python), deterministic, and for NSP the exact boundary matters little: Google's own pipeline packs whole
sentences into chunks of about 128 tokens, so an occasional merged or split sentence only moves a chunk edge.

Bad input raises `bert.errors.UserError` with one line naming the file: a missing path, a binary file, a JSONL
or CSV file without the text column, invalid UTF-8 in strict mode (with the line number), an empty corpus.
Invalid UTF-8 is replaced by U+FFFD by default and counted per file. A line longer than `MAX_LINE_BYTES`
(1 MiB) is skipped and reported by file and line number. Decision: such a line is almost never prose (minified
data, base64, a dump); failing a long prepare for it would be worse, and reading it whole could exhaust memory.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from bert.errors import UserError

MAX_LINE_BYTES = 1 << 20
"""Lines longer than this (bytes) are skipped and reported instead of read."""

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst"}
"""Extensions read as text when a folder is expanded (a file named explicitly is read whatever its name).
Any of these (but Parquet) may be gzip-compressed: "wiki.txt.gz", "docs.jsonl.gz"."""
TABLE_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
"""Files that mark a folder written by `datasets.save_to_disk`."""

Layout = Literal["auto", "google", "free"]


@dataclass
class Document:
    """A document: its sentences in order, and where it came from (for messages)."""

    sentences: list[str]
    source: str


@dataclass
class CorpusStats:
    """What reading the corpus found; printed in the prepare summary and stored in meta.json."""

    files: int = 0
    documents: int = 0
    sentences: int = 0
    replaced_chars: int = 0
    replaced_files: dict[str, int] = field(default_factory=dict)
    skipped_lines: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    layouts: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "documents": self.documents,
            "sentences": self.sentences,
            "replaced_chars": self.replaced_chars,
            "replaced_files": self.replaced_files,
            "skipped_lines": self.skipped_lines[:100],
            "skipped_line_count": len(self.skipped_lines),
            "skipped_files": self.skipped_files[:100],
            "layouts": self.layouts,
        }


# ------------------------------------------------------------------------------------------ sentence splitter

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "rev", "hon", "gen", "gov", "sen", "rep", "pres",
    "capt", "col", "lt", "sgt", "maj", "cmdr", "adm", "messrs", "mme", "mlle", "vs", "v", "e.g", "i.e", "cf",
    "al", "approx", "dept", "est", "fig", "figs", "no", "nos", "vol", "vols", "pp", "p", "ch", "sec", "art",
    "inc", "ltd", "co", "corp", "bros", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "mon", "tue", "wed", "thu", "fri", "sat", "sun", "mt", "ft", "ave", "blvd", "rd",
}  # fmt: skip
# After a dotted abbreviation such as "U.S." these words usually start a new sentence ("... in the U.S. The").
_SENTENCE_STARTERS = {
    "the", "a", "an", "it", "he", "she", "we", "they", "i", "this", "that", "these", "those", "but", "and",
    "in", "on", "at", "there", "his", "her", "their", "our", "its", "if", "when", "while", "as", "so", "yet",
}  # fmt: skip

# A candidate boundary: terminal punctuation (and closing quotes/brackets) followed by space and something
# that can open a sentence. The lookahead keeps "3.5", "e.g. this" and "U.S.-made" from ever being candidates.
_CANDIDATE = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s+[\"'\u201c\u2018(\[]*[A-Z0-9])")
_NEXT_WORD = re.compile(r"\s+[\"'\u201c\u2018(\[]*([A-Za-z]+)")
_WHITESPACE = re.compile(r"\s+")


def _is_boundary(text: str, start: int, end: int) -> bool:
    """Whether the punctuation text[start:end] really ends a sentence (only '.' needs checking)."""
    punct = text[start:end]
    if punct[0] != "." or len(punct.rstrip("\"'\u201d\u2019)]")) > 1:
        return True  # ! ? ... and "..": unambiguous enough
    word_start = text.rfind(" ", 0, start) + 1
    word = text[word_start:start].lstrip("\"'(\u201c\u2018[")
    if not word:
        return True
    lower = word.lower()
    if lower in _ABBREVIATIONS:
        return False
    if len(word) == 1 and word.isupper():
        return False  # an initial: "Harry S. Truman", "J. Smith"
    if "." in word and all(len(part) <= 2 for part in word.split(".")):
        # A dotted abbreviation (U.S, a.m, Ph.D): a boundary only when a usual sentence opener follows.
        match = _NEXT_WORD.match(text, end)
        return bool(match) and match.group(1).lower() in _SENTENCE_STARTERS
    return True


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences with the rules above; whitespace inside a sentence is collapsed."""
    text = _WHITESPACE.sub(" ", text).strip()
    if not text:
        return []
    sentences = []
    begin = 0
    for match in _CANDIDATE.finditer(text):
        if _is_boundary(text, match.start(), match.end()):
            sentences.append(text[begin : match.end()].strip())
            begin = match.end()
    tail = text[begin:].strip()
    if tail:
        sentences.append(tail)
    return [s for s in sentences if s]


# -------------------------------------------------------------------------------------------- reading lines


class _LineReader:
    """Decodes a file line by line: replaces (and counts) or rejects invalid UTF-8, skips huge lines."""

    def __init__(self, path: Path, stats: CorpusStats, errors: str) -> None:
        self.path = path
        self.stats = stats
        self.errors = errors

    def lines(self, limit: int | None = None) -> Iterator[str]:
        opener = gzip.open if self.path.suffix.lower() == ".gz" else open
        with opener(self.path, "rb") as handle:
            _check_not_binary(handle, self.path)
            yield from self._lines(handle, limit)

    def _lines(self, handle: BinaryIO, limit: int | None) -> Iterator[str]:
        number = 0
        while limit is None or number < limit:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # drain the rest of the line without keeping it
                    raw = handle.readline(MAX_LINE_BYTES)
                if limit is None:
                    self.stats.skipped_lines.append(f"{self.path}:{number}")
                continue
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                if self.errors == "strict":
                    raise UserError(
                        f"{self.path}: line {number} is not valid UTF-8 (byte {err.start}); "
                        "set data.encoding_errors=replace to substitute such bytes"
                    ) from None
                text = raw.decode("utf-8", errors="replace")
                if limit is None:  # only the full pass counts, not the layout sniffing
                    replaced = text.count("\ufffd") - raw.count("\ufffd".encode())
                    self.stats.replaced_chars += replaced
                    key = str(self.path)
                    self.stats.replaced_files[key] = self.stats.replaced_files.get(key, 0) + replaced
                yield text


def _check_not_binary(handle: BinaryIO, path: Path) -> None:
    head = handle.read(8192)
    handle.seek(0)
    if b"\x00" in head:
        raise UserError(
            f"{path}: looks like a binary file (NUL bytes; or UTF-16), not UTF-8 text; remove it from data.corpus"
        )


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
    reader = _LineReader(path, stats, errors)
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


# ----------------------------------------------------------------------------------------- table formats


def _jsonl_documents(path: Path, column: str, stats: CorpusStats, errors: str) -> Iterator[Document]:
    reader = _LineReader(path, stats, errors)

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


def _csv_documents(path: Path, column: str, stats: CorpusStats, errors: str) -> Iterator[Document]:
    reader = _LineReader(path, stats, errors)
    csv.field_size_limit(MAX_LINE_BYTES * 16)
    delimiter = "\t" if _suffix(path) == ".tsv" else ","
    rows = csv.DictReader(reader.lines(), delimiter=delimiter)
    if rows.fieldnames is None or column not in rows.fieldnames:
        found = ", ".join(rows.fieldnames or [])
        raise UserError(
            f"{path}: no text column '{column}' (found: {found or 'nothing'}); set data.text_column"
        )
    yield from _record_documents((row[column] for row in rows), str(path), column, stats)


def _parquet_documents(path: Path, column: str, stats: CorpusStats) -> Iterator[Document]:
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


def _hf_documents(name: str, column: str, stats: CorpusStats, trust_remote_code: bool) -> Iterator[Document]:
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
    repo, _, config = name.removeprefix("hf:").partition(":")
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        data = datasets.load_dataset(repo, config or None, split="train", streaming=True, **kwargs)
    except Exception as err:
        raise UserError(
            f"{name}: cannot load the Hugging Face dataset ({type(err).__name__}: {err})"
        ) from None
    yield from _record_documents((row.get(column) for row in data), name, column, stats)


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


def _suffix(path: Path) -> str:
    """The extension that says the format, looking through a .gz: "a.jsonl.gz" -> ".jsonl"."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _format_of(path: Path, fmt: str) -> str | None:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "hf" if any((path / m).exists() for m in HF_MARKERS) else None
    suffix = _suffix(path)
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
        if _suffix(path) not in known:
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
            docs = _jsonl_documents(path, text_column, stats, encoding_errors)
        elif item.format == "csv":
            docs = _csv_documents(path, text_column, stats, encoding_errors)
        elif item.format == "parquet":
            docs = _parquet_documents(path, text_column, stats)
        elif item.format == "hf":
            docs = _hf_documents(item.path, text_column, stats, trust_remote_code)
        else:
            raise UserError(f"{item.path}: unknown format {item.format!r}")
        for doc in docs:
            stats.documents += 1
            stats.sentences += len(doc.sentences)
            yield doc
