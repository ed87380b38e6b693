"""MLM masking and the collator: counts, 80/10/10, specials, whole words, determinism, batch contract."""

import dataclasses

import numpy as np
import pytest
import torch

from bert.data.collator import PretrainingCollator
from bert.data.masking import MaskingSpec, example_seeds, mask_batch, masked_count

SPECIALS = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
WORDS = {f"w{i}": 5 + i for i in range(200)}
PIECES = {f"##p{i}": 205 + i for i in range(50)}
VOCAB = {**SPECIALS, "[unused0]": 255, **WORDS, **PIECES}


def spec(whole_word=False):
    return MaskingSpec.from_vocab(VOCAB, list(SPECIALS.values()), 4, whole_word)


def random_batch(rng, batch=16, max_len=60, pieces=False):
    lengths = rng.integers(6, max_len + 1, size=batch)
    width = int(lengths.max()) + 3
    ids = np.zeros((batch, width), dtype=np.int64)
    for row, n in enumerate(lengths):
        body = rng.integers(5, 255 if pieces else 205, size=n - 3)
        sep = rng.integers(1, n - 2)
        ids[row, :n] = [2, *body[:sep], 3, *body[sep:], 3]
    return ids, lengths


@pytest.mark.parametrize("seed", range(8))
def test_exact_count_specials_padding_and_labels(seed):
    rng = np.random.default_rng(seed)
    ids, lengths = random_batch(rng)
    out = mask_batch(ids, lengths, example_seeds(seed, 0, np.arange(len(ids))), spec(), 0.15, 20)
    expected = np.minimum(20, np.maximum(1, np.rint(lengths * 0.15)))
    used = out.masked_lm_labels != -100
    assert (used.sum(1) == expected).all()
    for row in range(len(ids)):
        positions = out.masked_lm_positions[row][used[row]]
        assert (np.diff(positions) > 0).all() and (positions < lengths[row]).all()
        assert not np.isin(ids[row, positions], list(SPECIALS.values())).any()
        assert (out.masked_lm_labels[row][used[row]] == ids[row, positions]).all()
        assert (out.masked_lm_positions[row][~used[row]] == 0).all()
        changed = np.flatnonzero(out.input_ids[row] != ids[row])
        assert set(changed) <= set(
            positions
        )  # nothing outside the masked positions changes (padding, specials)


def test_masked_count_rule():
    assert masked_count(128, 0.15, 20) == 19 and masked_count(200, 0.15, 20) == 20
    assert masked_count(3, 0.15, 20) == 1 and masked_count(10, 0.15, 20) == 2  # round(1.5) -> 2 half-even


def test_80_10_10_and_random_tokens_never_special():
    rng = np.random.default_rng(0)
    ids, lengths = random_batch(rng, batch=2000, max_len=120)
    out = mask_batch(ids, lengths, example_seeds(1, 0, np.arange(len(ids))), spec(), 0.15, 20)
    used = out.masked_lm_labels != -100
    new = np.take_along_axis(out.input_ids, out.masked_lm_positions, 1)[used]
    original = out.masked_lm_labels[used]
    total = used.sum()
    is_mask = new == 4
    kept = new == original
    randomised = ~is_mask & ~kept
    assert abs(is_mask.sum() / total - 0.8) < 0.01
    # A random draw can hit the original token (1 in 250), which then counts as kept.
    assert abs(kept.sum() / total - 0.1) < 0.01 and abs(randomised.sum() / total - 0.1) < 0.01
    assert not np.isin(new[randomised], [0, 1, 2, 3, 4, 255]).any()  # no special, no [unused0]


def test_deterministic_per_seed_epoch_id_and_independent_of_batch():
    rng = np.random.default_rng(3)
    ids, lengths = random_batch(rng, batch=8)
    a = mask_batch(ids, lengths, example_seeds(5, 2, np.arange(8)), spec())
    b = mask_batch(ids, lengths, example_seeds(5, 2, np.arange(8)), spec())
    assert (a.input_ids == b.input_ids).all() and (a.masked_lm_positions == b.masked_lm_positions).all()
    other_epoch = mask_batch(ids, lengths, example_seeds(5, 3, np.arange(8)), spec())
    assert (other_epoch.masked_lm_positions != a.masked_lm_positions).any()
    # Row 5 alone, with different padding, gets the same mask as inside the batch.
    width = lengths[5] + 9
    alone_ids = np.zeros((1, width), dtype=np.int64)
    alone_ids[0, : lengths[5]] = ids[5, : lengths[5]]
    alone = mask_batch(alone_ids, lengths[5:6], example_seeds(5, 2, np.array([5])), spec())
    count = (alone.masked_lm_labels[0] != -100).sum()
    assert (alone.masked_lm_positions[0, :count] == a.masked_lm_positions[5, :count]).all()


@pytest.mark.parametrize("seed", range(5))
def test_whole_word_masking_masks_whole_words(seed):
    rng = np.random.default_rng(seed)
    ids, lengths = random_batch(rng, batch=32, pieces=True)
    out = mask_batch(ids, lengths, example_seeds(seed, 0, np.arange(32)), spec(whole_word=True), 0.15, 20)
    is_piece = (ids >= 205) & (ids < 255)
    for row in range(32):
        used = out.masked_lm_labels[row] != -100
        chosen = set(out.masked_lm_positions[row][used].tolist())
        target = min(20, max(1, round(lengths[row] * 0.15)))
        assert 0 < len(chosen) <= target
        for pos in range(1, lengths[row]):
            if is_piece[row, pos] and ids[row, pos - 1] not in (2, 3):  # a "##" piece joined to its word
                assert (pos in chosen) == (pos - 1 in chosen)


def test_collator_batch_contract():
    rng = np.random.default_rng(0)
    examples = []
    for i in range(5):
        n = int(rng.integers(8, 40))
        examples.append(
            {
                "input_ids": [2] + list(rng.integers(5, 200, n - 2)) + [3],
                "token_type_ids": [0] * n,
                "next_sentence_label": i % 2,
                "id": 100 + i,
            }
        )
    collator = PretrainingCollator(spec(), pad_id=0, seed=1, pad_to_multiple_of=8)
    batch = collator(examples)
    longest = max(len(e["input_ids"]) for e in examples)
    width = -(-longest // 8) * 8
    assert batch.input_ids.shape == batch.token_type_ids.shape == batch.attention_mask.shape == (5, width)
    tensors = [
        getattr(batch, f.name)
        for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    ]
    assert len(tensors) == 6 and all(v.dtype == torch.long for v in tensors)
    # the counts the training step normalises by, taken on the host, agree with the tensors
    labelled = int((batch.masked_lm_labels != -100).sum())
    assert batch.host_counts == (labelled, 5, int(batch.attention_mask.sum()))
    assert batch.attention_mask.sum(1).tolist() == [len(e["input_ids"]) for e in examples]
    assert (batch.input_ids[batch.attention_mask == 0] == 0).all()
    assert batch.masked_lm_positions.shape == batch.masked_lm_labels.shape
    assert batch.next_sentence_label.tolist() == [0, 1, 0, 1, 0]
    again = collator(examples)
    assert torch.equal(again.input_ids, batch.input_ids)
    collator.set_epoch(1)
    assert not torch.equal(collator(examples).masked_lm_positions, batch.masked_lm_positions)
    with_epoch = [{**e, "epoch": 0} for e in examples]
    assert torch.equal(collator(with_epoch).input_ids, batch.input_ids)  # the example's epoch wins


def test_collator_static_and_mlm_only():
    examples = [
        {
            "input_ids": [2, 9, 4, 3],
            "token_type_ids": [0] * 4,
            "id": 0,
            "masked_lm_positions": [2],
            "masked_lm_labels": [7],
        },
        {
            "input_ids": [2, 4, 10, 4, 3],
            "token_type_ids": [0] * 5,
            "id": 1,
            "masked_lm_positions": [1, 3],
            "masked_lm_labels": [8, 11],
        },
    ]
    batch = PretrainingCollator(spec(), pad_id=0, static_masking=True, pad_to_multiple_of=None)(examples)
    assert batch.next_sentence_label is None
    assert batch.input_ids.tolist() == [[2, 9, 4, 3, 0], [2, 4, 10, 4, 3]]
    assert batch.masked_lm_positions.tolist() == [[2, 0], [1, 3]]
    assert batch.masked_lm_labels.tolist() == [[7, -100], [8, 11]]
