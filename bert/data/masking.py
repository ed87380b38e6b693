"""Masked-language-model masking, vectorised over a batch with numpy; pure: the same seeds, the same masks.

Rules (Google's BERT):
- the number of masked tokens of a sequence is exactly
  `min(max_predictions_per_seq, max(1, round(n * masked_lm_prob)))` where n counts the sequence's real tokens
  ([CLS] and [SEP] included, padding not, as in Google's code), capped by the number of maskable tokens;
- special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) and padding are never chosen;
- each chosen token becomes [MASK] with probability 0.8, a random token with 0.1 (never a special token nor
  any other bracketed token such as [unused0]), and stays unchanged with 0.1;
- whole-word masking chooses words (a piece plus the "##" pieces that follow it) and, like Google, takes words
  in random order, skipping any word that would overshoot the count, so the count can end a little lower;
- positions are returned in increasing order, labels are the original ids.

Randomness without a random-number generator object: every random number is a hash (splitmix64) of
(example seed, stream, position), and an example's seed is a hash of (seed, epoch, example id). So a mask is a
pure function of those three numbers and of the tokens: resuming training needs no RNG state, a worker count
or batch composition never changes an example's mask, and the whole batch is computed with array operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bert.batch import IGNORE_INDEX  # unused masked-position slots: ignored by the losses

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective hash of uint64 values, element-wise (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (x + _GOLDEN).astype(np.uint64)
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def example_seeds(seed: int, epoch: int | np.ndarray, ids: np.ndarray) -> np.ndarray:
    """A 64-bit seed per example from (seed, epoch, example id). # (B,) uint64"""
    ids = np.asarray(ids).astype(np.int64).astype(np.uint64)
    epoch = np.asarray(epoch).astype(np.int64).astype(np.uint64)
    base = _mix(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return _mix(_mix(base ^ epoch) ^ ids)


def _uniform(seeds: np.ndarray, stream: int, length: int) -> np.ndarray:
    """Uniform [0, 1) numbers per example and position. # (B, length) float64"""
    positions = np.arange(length, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        keys = _mix(_mix(seeds[:, None] ^ (np.uint64(stream) * _M2)) + positions * _GOLDEN)
    return (keys >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def masked_count(
    num_real: np.ndarray | int, masked_lm_prob: float, max_predictions_per_seq: int
) -> np.ndarray:
    """Google's count: min(max_predictions, max(1, round(n * prob))), rounding half to even like round()."""
    num_real = np.asarray(num_real)
    return np.minimum(max_predictions_per_seq, np.maximum(1, np.rint(num_real * masked_lm_prob))).astype(
        np.int64
    )


@dataclass
class MaskingSpec:
    """What masking needs to know about a vocabulary."""

    mask_id: int
    special: np.ndarray
    """(V,) bool: tokens never chosen for masking."""
    replacements: np.ndarray
    """Token ids a chosen token may be replaced by (no special or bracketed tokens)."""
    continuation: np.ndarray | None = None
    """(V,) bool: "##" pieces, for whole-word masking (None: no whole-word masking)."""

    @classmethod
    def from_vocab(
        cls, vocab: dict[str, int], special_ids: list[int], mask_id: int, whole_word: bool
    ) -> MaskingSpec:
        size = max(vocab.values()) + 1
        special = np.zeros(size, dtype=bool)
        special[special_ids] = True
        bracketed = np.zeros(size, dtype=bool)
        continuation = np.zeros(size, dtype=bool)
        for token, index in vocab.items():
            bracketed[index] = token.startswith("[") and token.endswith("]")
            continuation[index] = token.startswith("##")
        replacements = np.flatnonzero(~(special | bracketed))
        return cls(mask_id, special, replacements, continuation if whole_word else None)


@dataclass
class MaskedBatch:
    """The result of masking a batch; positions and labels are padded to P = the largest count."""

    input_ids: np.ndarray
    """(B, T) ids after masking."""
    masked_lm_positions: np.ndarray
    """(B, P) positions, increasing; unused slots 0."""
    masked_lm_labels: np.ndarray
    """(B, P) original ids; unused slots -100."""


def _choose_whole_words(
    candidate: np.ndarray, keys: np.ndarray, starts: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Greedy whole-word choice per row: words in key order, skipping any that would overshoot the count."""
    chosen = np.zeros_like(candidate)
    for row in range(candidate.shape[0]):
        start_positions = np.flatnonzero(starts[row])
        if start_positions.size == 0:
            continue
        word_of = np.cumsum(starts[row]) - 1  # word index of every position (valid on candidates)
        lengths = np.bincount(word_of[candidate[row]], minlength=start_positions.size)
        order = np.argsort(keys[row, start_positions], kind="stable")
        budget = int(counts[row])
        taken = np.zeros(start_positions.size, dtype=bool)
        total = 0
        for word in order.tolist():
            if total >= budget:
                break
            if total + lengths[word] <= budget:
                taken[word] = True
                total += lengths[word]
        chosen[row] = candidate[row] & taken[np.clip(word_of, 0, None)]
    return chosen


def mask_batch(
    input_ids: np.ndarray,
    lengths: np.ndarray,
    seeds: np.ndarray,
    spec: MaskingSpec,
    masked_lm_prob: float = 0.15,
    max_predictions_per_seq: int = 20,
) -> MaskedBatch:
    """Mask a padded batch. input_ids # (B, T); lengths # (B,) real tokens per row; seeds # (B,) uint64."""
    batch, width = input_ids.shape
    real = np.arange(width)[None, :] < lengths[:, None]  # (B, T)
    candidate = real & ~spec.special[input_ids]  # (B, T)
    counts = np.minimum(
        masked_count(lengths, masked_lm_prob, max_predictions_per_seq), candidate.sum(1)
    )  # (B,)
    keys = np.where(candidate, _uniform(seeds, 0, width), 2.0)  # non-candidates sort last

    if spec.continuation is None:
        order = np.argsort(keys, axis=1, kind="stable")  # (B, T)
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(width)[None, :].repeat(batch, 0), axis=1)
        chosen = ranks < counts[:, None]  # (B, T)
    else:
        previous = np.concatenate([np.zeros((batch, 1), bool), candidate[:, :-1]], axis=1)
        # A word starts at a piece that is not "##", or at a "##" piece cut off from its word by truncation.
        starts = candidate & (~spec.continuation[input_ids] | ~previous)
        chosen = _choose_whole_words(candidate, keys, starts, counts)

    num_chosen = chosen.sum(1)  # (B,)
    width_p = max(int(num_chosen.max(initial=0)), 1)
    # Stable sort of "not chosen" puts the chosen positions first, in increasing order.
    positions = np.argsort(~chosen, axis=1, kind="stable")[:, :width_p]  # (B, P)
    used = np.arange(width_p)[None, :] < num_chosen[:, None]  # (B, P)
    positions = np.where(used, positions, 0)
    originals = np.take_along_axis(input_ids, positions, axis=1)  # (B, P)
    labels = np.where(used, originals, IGNORE_INDEX)

    action = _uniform(seeds, 1, width)  # per position: < 0.8 mask, < 0.9 random token, else keep
    action = np.take_along_axis(action, positions, axis=1)  # (B, P)
    pick = _uniform(seeds, 2, width)
    pick = np.take_along_axis(pick, positions, axis=1)
    random_tokens = spec.replacements[(pick * len(spec.replacements)).astype(np.int64)]
    new_tokens = np.where(action < 0.8, spec.mask_id, np.where(action < 0.9, random_tokens, originals))
    masked = input_ids.copy()
    rows = np.nonzero(used)
    masked[rows[0], positions[rows]] = new_tokens[rows]
    return MaskedBatch(masked, positions.astype(np.int64), labels.astype(np.int64))
