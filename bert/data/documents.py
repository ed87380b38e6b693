"""What every corpus reader yields and counts, and how it reads a file's lines.

- `Document`: one document's sentences in order, and where it came from.
- `CorpusStats`: what reading found (files, documents, replaced characters, skipped lines and files).
- `LineReader`: a file (gzip or plain) line by line; invalid UTF-8 replaced and counted, or rejected in strict
  mode with the line number; a line over `MAX_LINE_BYTES` skipped and reported; a binary file refused.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bert.errors import UserError

MAX_LINE_BYTES = 1 << 20
"""Lines longer than this (bytes) are skipped and reported instead of read."""


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


class LineReader:
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


def format_suffix(path: Path) -> str:
    """The extension that says the format, looking through a .gz: "a.jsonl.gz" -> ".jsonl"."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""
