"""Pretraining data: corpus readers -> documents of sentences -> NSP instances -> Arrow on disk -> batches.

- `synthetic.py`  the built-in synthetic corpus (`data.corpus: [synthetic]`);
- `corpus.py`     `data.corpus` -> documents: text files (Google layout, free text), resolving files, folders
                  and globs; `documents.py` (Document, CorpusStats, reading lines), `sentences.py` (the
                  sentence splitter), `records.py` (JSONL/CSV/Parquet, Hugging Face datasets);
- `instances.py`  NSP pairs and MLM-only chunks (Google's create_pretraining_data semantics);
- `masking.py`    MLM masking (80/10/10, whole-word option), vectorised, a pure function of seeds;
- `prepare.py`    `bert prepare`: `run_prepare`, the stages from corpus to shards, the cache; the row
                  functions of its instance stage in `instance_rows.py`;
- `prepared.py`   the prepared folder's format: `load_prepared`, meta.json, the split files;
- `collator.py`   `PretrainingCollator` / `build_collator`: padded batches with dynamic masks;
- `show.py`       `bert inspect`: tables and pictures of prepared examples and batches.
"""
