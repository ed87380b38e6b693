"""Pretraining data: corpus readers -> documents of sentences -> NSP instances -> Arrow on disk -> batches.

- `synthetic.py`  the built-in synthetic corpus (`data.corpus: [synthetic]`);
- `corpus.py`     readers for text files (Google layout, free text), JSONL/CSV/Parquet, Hugging Face datasets;
- `instances.py`  NSP pairs and MLM-only chunks (Google's create_pretraining_data semantics);
- `masking.py`    MLM masking (80/10/10, whole-word option), vectorised, a pure function of seeds;
- `prepare.py`    `bert prepare`: `run_prepare`, `load_prepared`, the cache and meta.json;
- `collator.py`   `PretrainingCollator` / `build_collator`: padded batches with dynamic masks;
- `inspect.py`    `bert inspect`: tables and pictures of prepared examples and batches.
"""
