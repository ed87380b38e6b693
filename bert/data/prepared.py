"""The prepared-data folder: its layout, its cache key, reading it back, and its summary.

A prepared folder (written by bert/data/prepare.py) is a sharded Arrow dataset:

    data.cache_dir/<key>/
        train/, validation/       `datasets.save_to_disk` shards of instances
        tokenizer/                the tokenizer in the Hugging Face layout
        meta.json                 settings, counts, the input fingerprints, the key
        COMPLETE                  written last: every file's size and sha256 (the folder is finished)

Reading a folder checks every file's size against the marker (instant); `verify_prepared(..., full=True)`
(`bert prepare ... --verify`) also checks the hashes. Damage is one line with the remedy (`--force`
rebuilds the folder); the collator also refuses token or segment ids outside the vocabulary, so a flipped
byte that keeps the size cannot train silently.

The key is a hash of the inputs (resolved paths, sizes, modification times; the tokenizer's files likewise)
and of every setting that changes the result, so a second run with the same inputs reuses the folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bert import fs
from bert.config import DataConfig
from bert.errors import UserError

FORMAT_VERSION = 1
"""Bumped when the layout of a prepared folder changes, so older folders are not reused."""
COMPLETE_MARKER = "COMPLETE"
"""File written last into a prepared folder."""
_IGNORED_SETTINGS = {"num_proc", "cache_dir", "prepared_dir"}
"""DataConfig fields that do not change the prepared data (left out of the cache key)."""


# --------------------------------------------------------------------------------------------- cache key


def _settings(data_cfg: DataConfig) -> dict[str, Any]:
    from bert.config import to_dict

    settings = {k: v for k, v in to_dict(data_cfg).items() if k not in _IGNORED_SETTINGS}
    if settings.get("corpus") != ["synthetic"]:
        settings.pop("synthetic", None)
    return settings


def _tokenizer_fingerprint(path: str | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    target = Path(path)
    files = sorted(p for p in target.iterdir() if p.is_file()) if target.is_dir() else [target]
    return [
        {"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
        for p in files
        if p.exists()
    ]


def cache_key(data_cfg: DataConfig, input_fingerprints: list[dict[str, Any]]) -> str:
    """Hash of the settings and the inputs' paths, sizes and mtimes (content is not read, to stay instant)."""
    payload = {
        "version": FORMAT_VERSION,
        "settings": _settings(data_cfg),
        "inputs": input_fingerprints,
        "tokenizer": _tokenizer_fingerprint(data_cfg.tokenizer),
        # data prepared before load_tokenizer dropped a tokenizer.json's own padding is not reused
        "tokenizer_loading": "without saved padding or truncation",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_manifest(folder: Path) -> None:
    """The COMPLETE marker: every file's size and sha256 (written last)."""
    manifest = fs.manifest_of(folder, COMPLETE_MARKER)
    (folder / COMPLETE_MARKER).write_text(json.dumps(manifest, indent=1) + "\n")


def verify_prepared(folder: str | Path, full: bool = False) -> str | None:
    """None when every file the marker lists is there with its size (and, `full`, its hash); else the
    first problem. Folders from before the manifest (a timestamp in the marker) pass unchecked."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None  # an older marker: nothing recorded to check against
    if not isinstance(manifest, dict):
        return None
    for name, entry in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry.get("size"):
            return f"{name} has {path.stat().st_size} bytes, the marker says {entry.get('size')}"
        if full and fs.file_sha256(path) != entry.get("sha256"):
            return f"{name} differs from its hash (damaged)"
    return None


def is_complete(folder: str | Path) -> bool:
    """Whether `folder` is a finished prepared dataset (its marker exists)."""
    return (Path(folder) / COMPLETE_MARKER).is_file() and (Path(folder) / "meta.json").is_file()


def looks_prepared(folder: Path) -> bool:
    """An unfinished prepared folder (train/ or tokenizer/ without the marker) may be replaced."""
    names = {p.name for p in folder.iterdir()}
    return bool(names) and names <= {"train", "validation", "tokenizer", "meta.json"}


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def summary(folder: Path, meta: dict[str, Any]) -> str:
    """The closing summary of a prepare run."""
    counts = meta["counts"]
    train, val = counts["train"], counts["validation"]
    inp = meta["input"]
    lines = [
        f"prepared {folder} in {meta['seconds']:.1f} s",
        f"  documents  {counts['documents']:,} (train {counts['train_documents']:,}, validation "
        f"{counts['validation_documents']:,}), sentences {counts['sentences']:,}",
        f"  instances  train {train['instances']:,}, validation {val['instances']:,}; tokens "
        f"{train['tokens'] + val['tokens']:,}; mean fill {train['mean_fill']:.1%} of {meta['max_seq_length']}",
    ]
    if "nsp_labels" in train:
        nsp = train["nsp_labels"]
        total = max(train["instances"], 1)
        lines.append(
            f"  NSP labels is next {nsp['is_next'] / total:.1%}, random {nsp['random'] / total:.1%}, "
            f"none (single-sentence documents, MLM only) {nsp['none'] / total:.1%}"
        )
    lines.append(f"  tokenizer  {meta['vocab_size']:,} tokens, {'uncased' if meta['lowercase'] else 'cased'}")
    if val["instances"] == 0:
        lines.append(
            "  warning    the validation split is empty (fewer than 2 documents, or validation_fraction=0)"
        )
    if inp["files"]:
        lines.append(f"  input      {_plural(inp['files'], 'file')} read")
    if inp["skipped_files"]:
        shown = ", ".join(f"{Path(p).parent.name}/{Path(p).name}" for p in inp["skipped_files"][:4])
        lines.append(
            f"  skipped    {_plural(len(inp['skipped_files']), 'file')} without a text extension ({shown})"
        )
    if inp["skipped_line_count"]:
        lines.append(
            f"  skipped    {inp['skipped_line_count']} lines over 1 MiB: {', '.join(inp['skipped_lines'][:5])}"
        )
    if inp["replaced_chars"]:
        files = inp["replaced_files"]
        shown = ", ".join(f"{Path(p).name} ({n})" for p, n in list(files.items())[:6])
        more = f" and {len(files) - 6} more" if len(files) > 6 else ""
        lines.append(
            f"  replaced   {inp['replaced_chars']} invalid UTF-8 characters in {_plural(len(files), 'file')}: {shown}{more}"
        )
    return "\n".join(lines)


def load_prepared(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """The prepared splits ("train", "validation") as a DatasetDict, and the metadata dict."""
    import datasets

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such prepared folder; run bert prepare first")
    if not is_complete(folder):
        raise UserError(
            f"{folder}: incomplete prepared folder (no {COMPLETE_MARKER} marker); run bert prepare again"
        )
    problem = verify_prepared(folder)
    if problem is not None:
        raise UserError(
            f"{folder}: damaged prepared data: {problem}; run bert prepare with --force to rebuild it"
        )
    meta = read_meta(folder)
    try:
        splits = datasets.DatasetDict(
            {split: datasets.load_from_disk(str(folder / split)) for split in ("train", "validation")}
        )
    except Exception as err:  # noqa: BLE001 - pyarrow and datasets raise many kinds for a damaged shard
        raise UserError(
            f"{folder}: damaged prepared data ({type(err).__name__}: {str(err)[:120]}); run bert prepare with "
            "--force to rebuild it"
        ) from None
    return splits, meta


META_TYPES = {"vocab_size": int, "max_seq_length": int, "static_masking": bool, "format_version": int}
"""The meta.json values training reads, with their types."""


def read_meta(folder: str | Path) -> dict[str, Any]:
    """A prepared folder's meta.json, checked: valid JSON, this format version, the types training reads.
    The one reader of the file; every problem is one line naming it."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except OSError:
        raise UserError(f"{folder}: no meta.json (not a prepared folder); run bert prepare") from None
    except ValueError as err:
        raise UserError(f"{folder / 'meta.json'}: not valid JSON ({err}); run bert prepare --force") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{folder}: prepared by another version of bert (format {meta.get('format_version')}, "
            f"this one reads {FORMAT_VERSION}); run bert prepare --force"
        )
    for key, kind in META_TYPES.items():
        if key in meta and not isinstance(meta[key], kind):
            raise UserError(
                f"{folder / 'meta.json'}: {key} is {type(meta[key]).__name__} {meta[key]!r}, expected "
                f"{kind.__name__}; run bert prepare --force to rebuild the folder"
            )
    return meta
