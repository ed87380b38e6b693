"""`bert prepare`: corpus -> tokenizer -> NSP (or MLM-only) instances -> a sharded Arrow dataset on disk.

Stages, each bounded in memory (the corpus is never held as Python lists):
1. read: documents stream from the readers (`corpus.py`) or the synthetic generator into an intermediate Arrow
   file, a batch of documents at a time;
2. split by document: a seeded permutation holds out `validation_fraction` of the documents (at least one when
   there are two or more), and shuffles the order of the rest;
3. tokenizer: trained from the Arrow file's sentences (`tokenizers` WordPiece) or loaded from data.tokenizer;
4. instances: the shuffled documents are written in groups of about 256 (one group an Arrow row), then
   `datasets.map` over the groups (num_proc workers) runs `instance_rows.make_instances`: all sentences of a
   group encoded in one call, instances built with Google's rules (`instances.py`); a random "B" comes from
   another document of the same group, which, the documents being shuffled, is a random document of the
   corpus; each group's `random.Random` is seeded by (seed, split, group index), so num_proc never changes
   the result;
5. finish: instances are shuffled, numbered (`id`, stable) and, with static masking, masked; each split is
   written with `save_to_disk` in shards, with `tokenizer/` (Hugging Face layout) and `meta.json`.

The output folder is `data.cache_dir/<key>` (bert/data/prepared.py: the layout, the key, reading it back).
Everything is built in a temporary sibling folder (bert.fs.atomic_folder); the `COMPLETE` marker is written
last and the folder is then renamed into place, so an interrupted prepare never looks finished, and a
complete folder with the same key is reused. The temp folders of prepares that died are removed by the next
one; a live prepare's (another process's) is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bert import fs
from bert.config import DataConfig, PretrainConfig
from bert.data.corpus import iter_documents, resolve_inputs
from bert.data.documents import CorpusStats, Document
from bert.data.instance_rows import final_features, finish_instances, instance_features, make_instances
from bert.data.prepared import (
    FORMAT_VERSION,
    cache_key,
    is_complete,
    load_prepared,
    looks_prepared,
    summary,
    write_manifest,
)
from bert.errors import UserError

__all__ = ["load_prepared", "run_prepare"]

DOCS_PER_BATCH = 256
"""Documents per group in the instance stage (random B documents come from the same group)."""


# ---------------------------------------------------------------------------------------------- reading


def _is_synthetic(data_cfg: DataConfig) -> bool:
    return list(data_cfg.corpus) == ["synthetic"]


def _documents(data_cfg: DataConfig, inputs: list[Any], stats: CorpusStats) -> Iterator[Document]:
    if _is_synthetic(data_cfg):
        from bert.data.synthetic import iter_synthetic_documents

        syn = data_cfg.synthetic
        for doc in iter_synthetic_documents(syn.num_documents, syn.seed, syn.num_topics):
            stats.documents += 1
            stats.sentences += len(doc.sentences)
            yield Document(doc.sentences, f"synthetic topic {doc.topic}")
        return
    yield from iter_documents(
        inputs,
        stats,
        layout=data_cfg.layout,
        document_per_file=data_cfg.document_per_file,
        text_column=data_cfg.text_column,
        encoding_errors=data_cfg.encoding_errors,
        trust_remote_code=data_cfg.trust_remote_code,
    )


def _write_documents(documents: Iterator[Document], path: Path, progress: bool, alphabet: set[str]) -> int:
    """Stream documents into an Arrow stream file, a batch at a time; returns the number written.

    Also collects the corpus's characters into `alphabet` (for deterministic tokenizer training)."""
    import pyarrow as pa
    from tqdm.auto import tqdm

    kind = pa.list_(pa.string())
    schema = pa.schema([("sentences", kind)])
    count = 0
    buffer: list[list[str]] = []
    chars = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for doc in tqdm(documents, desc="reading", unit=" docs", disable=not progress):
            buffer.append(doc.sentences)
            text = "".join(doc.sentences)
            alphabet.update(text)
            chars += len(text)
            count += 1
            if len(buffer) >= 1000 or chars > 32 << 20:
                writer.write_batch(pa.record_batch([pa.array(buffer, kind)], schema=schema))
                buffer, chars = [], 0
        if buffer:
            writer.write_batch(pa.record_batch([pa.array(buffer, kind)], schema=schema))
    return count


def _split_indices(num_documents: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) document indices, both in a seeded random order."""
    order = np.random.default_rng(seed).permutation(num_documents)
    num_val = int(round(num_documents * fraction))
    if fraction > 0 and num_documents >= 2:
        num_val = min(max(num_val, 1), num_documents - 1)
    else:
        num_val = 0
    return order[num_val:], order[:num_val]


# -------------------------------------------------------------------------------------------- map steps


def _write_groups(docs: Any, indices: np.ndarray, path: Path) -> int:
    """Write the documents `indices` (in that order) as groups of about DOCS_PER_BATCH, one group a row.

    Grouping here, not by `map`'s batches, keeps the result independent of num_proc: `map` splits a dataset
    into contiguous shards per worker, which would move batch edges and so change which documents meet."""
    import pyarrow as pa

    size = DOCS_PER_BATCH
    while len(indices) % size == 1 and len(indices) > 1:  # never a last group of one lone document
        size += 1
    kind = pa.list_(pa.list_(pa.string()))
    schema = pa.schema([("documents", kind)])
    groups = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in docs.select(indices).iter(batch_size=size):
            writer.write_batch(pa.record_batch([pa.array([batch["sentences"]], kind)], schema=schema))
            groups += 1
    return groups


# ------------------------------------------------------------------------------------------------- main


def _resolve_tokenizer(data_cfg: DataConfig, docs: Any, alphabet: set[str], progress: bool) -> Any:
    from bert.tokenizer import load_tokenizer, train_tokenizer

    if data_cfg.tokenizer:
        return load_tokenizer(data_cfg.tokenizer, lowercase=None)

    def texts() -> Iterator[list[str]]:
        for batch in docs.iter(batch_size=64):
            yield from batch["sentences"]

    return train_tokenizer(
        texts(), data_cfg.vocab_size, data_cfg.lowercase, alphabet=alphabet, show_progress=progress
    )


def _num_proc(data_cfg: DataConfig, num_groups: int) -> int | None:
    wanted = data_cfg.num_proc if data_cfg.num_proc is not None else (os.cpu_count() or 1)
    # Worker start-up costs about a second; small inputs are faster in this process.
    return min(wanted, num_groups) if num_groups >= 4 and wanted > 1 else None


def _build_split(
    docs: Any,
    indices: np.ndarray,
    split: str,
    tokenizer: Any,
    data_cfg: DataConfig,
    work: Path,
    out: Path,
    progress: bool,
) -> dict[str, Any]:
    from datasets import Dataset

    from bert.data.masking import MaskingSpec
    from bert.tokenizer import special_ids

    ids = special_ids(tokenizer)
    options = {
        "seed": data_cfg.seed,
        "split": split,
        "max_seq_length": data_cfg.max_seq_length,
        "short_seq_prob": data_cfg.short_seq_prob,
        "nsp": data_cfg.nsp,
        "dupe_factor": data_cfg.dupe_factor,
        "cls_id": ids.cls,
        "sep_id": ids.sep,
    }
    features = instance_features(data_cfg.nsp)
    if len(indices) == 0:
        instances = Dataset.from_dict({k: [] for k in features}, features=features)
    else:
        num_groups = _write_groups(docs, indices, work / f"groups_{split}.arrow")
        groups = Dataset.from_file(str(work / f"groups_{split}.arrow"))
        instances = groups.map(
            make_instances,
            batched=True,
            batch_size=1,
            with_indices=True,
            remove_columns=["documents"],
            features=features,
            fn_kwargs={"tokenizer": tokenizer, "options": options},
            num_proc=_num_proc(data_cfg, num_groups),
            cache_file_name=str(work / f"instances_{split}.arrow"),
            new_fingerprint=f"instances-{split}",
            desc=f"pairing {split}",
        )
    spec = MaskingSpec.from_vocab(tokenizer.get_vocab(), ids.all, ids.mask, data_cfg.whole_word_mask)
    finish = {
        "static_masking": data_cfg.static_masking,
        "seed": data_cfg.seed,
        "pad_id": ids.pad,
        "spec": spec,
        "masked_lm_prob": data_cfg.masked_lm_prob,
        "max_predictions_per_seq": data_cfg.max_predictions_per_seq,
    }
    # Google shuffles instances so that a batch mixes documents even without a shuffling loader.
    shuffled = instances.shuffle(seed=data_cfg.seed) if len(instances) else instances
    final = shuffled.map(
        finish_instances,
        batched=True,
        batch_size=1000,
        with_indices=True,
        features=final_features(data_cfg.nsp, data_cfg.static_masking),
        fn_kwargs={"options": finish},
        cache_file_name=str(work / f"final_{split}.arrow"),
        new_fingerprint=f"final-{split}",
        desc=f"finishing {split}",
    )
    # An empty split (a corpus of one document has no validation) still needs one shard to load back.
    shards = {"num_shards": 1} if len(final) == 0 else {"max_shard_size": "256MB"}
    final.save_to_disk(str(out / split), **shards)
    return _split_counts(final, data_cfg)


def _split_counts(final: Any, data_cfg: DataConfig) -> dict[str, Any]:
    import pyarrow.compute as pc

    table = final.data.table
    num = len(final)
    tokens = int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0) if num else 0
    counts: dict[str, Any] = {
        "instances": num,
        "tokens": tokens,
        "mean_fill": tokens / max(num * data_cfg.max_seq_length, 1),
    }
    if data_cfg.nsp and num:
        labels = table.column("next_sentence_label").to_numpy()
        counts["nsp_labels"] = {
            "is_next": int((labels == 0).sum()),
            "random": int((labels == 1).sum()),
            "none": int((labels == -100).sum()),
        }
    return counts


def _prepare_into(
    work: Path,
    data_cfg: DataConfig,
    inputs: list[Any],
    stats: CorpusStats,
    fingerprints: list[dict[str, Any]],
    key: str,
    started: float,
    progress: bool,
) -> dict[str, Any]:
    """Stages 1-5 into the (temp) folder `work`; returns meta.json's content."""
    import datasets

    from bert.config import to_dict
    from bert.tokenizer import is_lowercase, save_tokenizer, special_ids

    scratch = work / "scratch"
    scratch.mkdir()
    alphabet: set[str] = set()
    num_docs = _write_documents(
        _documents(data_cfg, inputs, stats), scratch / "documents.arrow", progress, alphabet
    )
    if num_docs == 0:
        raise UserError(f"{', '.join(data_cfg.corpus)}: the corpus holds no text (0 documents)")
    docs = datasets.Dataset.from_file(str(scratch / "documents.arrow"))
    train_idx, val_idx = _split_indices(num_docs, data_cfg.validation_fraction, data_cfg.seed)

    tokenizer = _resolve_tokenizer(data_cfg, docs, alphabet, progress)
    save_tokenizer(tokenizer, work / "tokenizer", model_max_length=max(512, data_cfg.max_seq_length))
    splits = {}
    for split, idx in (("train", train_idx), ("validation", val_idx)):
        splits[split] = _build_split(docs, idx, split, tokenizer, data_cfg, scratch, work, progress)
    del docs
    shutil.rmtree(scratch)

    ids = special_ids(tokenizer)
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tokenizer": "tokenizer",
        "vocab_size": tokenizer.get_vocab_size(),
        "lowercase": is_lowercase(tokenizer),
        "special_token_ids": {
            "pad": ids.pad,
            "unk": ids.unk,
            "cls": ids.cls,
            "sep": ids.sep,
            "mask": ids.mask,
        },
        "max_seq_length": data_cfg.max_seq_length,
        "nsp": data_cfg.nsp,
        "static_masking": data_cfg.static_masking,
        "masked_lm_prob": data_cfg.masked_lm_prob,
        "max_predictions_per_seq": data_cfg.max_predictions_per_seq,
        "whole_word_mask": data_cfg.whole_word_mask,
        "counts": {
            "documents": num_docs,
            "train_documents": len(train_idx),
            "validation_documents": len(val_idx),
            "sentences": stats.sentences,
            "train": splits["train"],
            "validation": splits["validation"],
        },
        "input": stats.as_dict(),
        "inputs": fingerprints,
        "config": to_dict(data_cfg),
        "seconds": round(time.perf_counter() - started, 2),
    }
    (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_manifest(work)  # last: the folder is now complete, every file's size and sha256 recorded
    return meta


def run_prepare(
    cfg: PretrainConfig | DataConfig,
    output_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Prepare the data section (of a pretraining config, or given alone); return the complete folder (reused
    if one with the same inputs and settings exists)."""
    import datasets

    data_cfg = cfg.data if isinstance(cfg, PretrainConfig) else cfg
    if data_cfg.prepared_dir and output_dir is None and not force:
        if not is_complete(data_cfg.prepared_dir):
            raise UserError(
                f"{data_cfg.prepared_dir}: not a complete prepared folder (data.prepared_dir); run bert prepare"
            )
        return Path(data_cfg.prepared_dir)
    if not data_cfg.corpus:
        raise UserError("data.corpus is empty: name text files, folders or globs, or [synthetic]")

    started = time.perf_counter()
    stats = CorpusStats()
    inputs = [] if _is_synthetic(data_cfg) else resolve_inputs(list(data_cfg.corpus), data_cfg.format, stats)
    if not _is_synthetic(data_cfg) and not inputs:
        raise UserError(f"{', '.join(data_cfg.corpus)}: no readable corpus files found (data.corpus)")
    fingerprints = [item.fingerprint() for item in inputs]
    key = cache_key(data_cfg, fingerprints)
    out = Path(output_dir) if output_dir is not None else Path(data_cfg.cache_dir) / key
    fs.remove_stale_temps(out.parent)  # leftovers of prepares that died (a live one's are kept)
    if out.exists() and not force and is_complete(out):
        meta = json.loads((out / "meta.json").read_text())
        if meta.get("fingerprint") == key:
            if progress:
                print(f"prepared data is up to date: {out} (inputs and settings unchanged; --force rebuilds)")
            return out
    if out.exists() and any(out.iterdir()) and not (out / "meta.json").exists() and not looks_prepared(out):
        raise UserError(f"{out}: exists and is not a prepared dataset; choose another --output or remove it")

    # Live bars on a terminal only: in a log file every redraw would be a line.
    bars = progress and sys.stderr.isatty()
    was_enabled = datasets.is_progress_bar_enabled()
    if not bars:
        datasets.disable_progress_bars()
    try:
        with fs.atomic_folder(out) as work:
            meta = _prepare_into(work, data_cfg, inputs, stats, fingerprints, key, started, bars)
    finally:
        if was_enabled and not bars:
            datasets.enable_progress_bars()
    if progress:
        print(summary(out, meta))
    return out
