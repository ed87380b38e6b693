"""The row functions of `bert prepare`'s instance stage, which `datasets.map` runs, and the Arrow features.

- `make_instances`: one group of documents (an Arrow row) -> its NSP or MLM-only instances: every sentence of
  the group encoded in one `encode_batch_fast` call, then Google's rules (instances.py) with a
  `random.Random` seeded by (seed, split, group index), so the number of worker processes never changes the
  result;
- `finish_instances`: the shuffled instances numbered (`id`) and, with static masking, masked;
- `instance_features` / `final_features`: the Arrow schemas of the two stages' outputs.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from bert.batch import IGNORE_INDEX
from bert.data.instances import create_instances


def make_instances(
    batch: dict[str, list], indices: list[int], tokenizer: Any, options: dict
) -> dict[str, list]:
    """One group of documents: encode all its sentences in one call, then build the group's instances."""
    (docs,) = batch["documents"]  # batch_size=1: one group
    flat = [s for doc in docs for s in doc]
    encoded = tokenizer.encode_batch_fast(flat, add_special_tokens=False) if flat else []
    tokenized: list[list[list[int]]] = []
    k = 0
    for doc in docs:
        tokenized.append([e.ids for e in encoded[k : k + len(doc)] if e.ids])
        k += len(doc)
    # Seeded by the group's index: the result does not depend on num_proc or scheduling.
    rng = random.Random(f"{options['seed']}:{options['split']}:{indices[0]}")
    instances = create_instances(
        tokenized,
        options["max_seq_length"],
        options["short_seq_prob"],
        options["nsp"],
        options["dupe_factor"],
        options["cls_id"],
        options["sep_id"],
        rng,
    )
    out: dict[str, list] = {
        "input_ids": [i.input_ids for i in instances],
        "token_type_ids": [i.token_type_ids for i in instances],
    }
    if options["nsp"]:
        out["next_sentence_label"] = [i.next_sentence_label for i in instances]
    return out


def finish_instances(batch: dict[str, list], indices: list[int], options: dict) -> dict[str, list]:
    """Number the (already shuffled) instances and, for static masking, draw and store their masks."""
    batch["id"] = list(indices)
    if options["static_masking"]:
        from bert.data.masking import example_seeds, mask_batch

        lengths = np.array([len(x) for x in batch["input_ids"]], dtype=np.int64)
        padded = np.full((len(lengths), int(lengths.max())), options["pad_id"], dtype=np.int64)
        for row, ids in enumerate(batch["input_ids"]):
            padded[row, : len(ids)] = ids
        masked = mask_batch(
            padded,
            lengths,
            example_seeds(options["seed"], 0, np.asarray(indices)),
            options["spec"],
            options["masked_lm_prob"],
            options["max_predictions_per_seq"],
        )
        counts = (masked.masked_lm_labels != IGNORE_INDEX).sum(1)
        batch["input_ids"] = [row[:n].tolist() for row, n in zip(masked.input_ids, lengths)]
        batch["masked_lm_positions"] = [
            row[:n].tolist() for row, n in zip(masked.masked_lm_positions, counts)
        ]
        batch["masked_lm_labels"] = [row[:n].tolist() for row, n in zip(masked.masked_lm_labels, counts)]
    return batch


def _list_of(value: Any) -> Any:
    try:
        from datasets import List  # datasets >= 4
    except ImportError:  # pragma: no cover - older datasets
        from datasets import Sequence as List
    return List(value)


def instance_features(nsp: bool) -> Any:
    """The Arrow features of the instances `make_instances` returns."""
    from datasets import Features, Value

    features = {"input_ids": _list_of(Value("int32")), "token_type_ids": _list_of(Value("int8"))}
    if nsp:
        features["next_sentence_label"] = Value("int8")
    return Features(features)


def final_features(nsp: bool, static: bool) -> Any:
    """The Arrow features of a prepared split: the instances, their `id`, and with static masking the masks."""
    from datasets import Features, Value

    features = dict(instance_features(nsp))
    features["id"] = Value("int64")
    if static:
        features["masked_lm_positions"] = _list_of(Value("int32"))
        features["masked_lm_labels"] = _list_of(Value("int32"))
    return Features(features)
