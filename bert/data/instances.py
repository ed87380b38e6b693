"""Training instances from tokenized documents: NSP sentence pairs (Google's semantics) or MLM-only chunks.

Pure functions: a document is a list of sentences, a sentence a list of token ids; randomness comes only from
the `random.Random` passed in, so the same seed gives the same instances. Written from the semantics of
Google's `create_pretraining_data.py`:

- A target length is drawn per chunk: `max_seq_length - 3` (room for [CLS] and two [SEP]), or with
  probability `short_seq_prob` a random length in [2, that], so the model also sees short sequences.
  (Google draws it once per document; with a book as one document a single draw makes the whole book short,
  so the share of short sequences would swing with a few large documents. Per chunk keeps it at
  short_seq_prob whatever the document sizes.)
- Whole sentences are gathered until the target is reached (or the document ends). A random split point
  divides them into A and B. With probability 1/2 (always, when the chunk holds one sentence) B is replaced by
  text from a random other document starting at a random sentence, and the sentences of the chunk that were
  not used go back to be read again.
- The pair is trimmed to fit, one token at a time from the longer side, from its front or back at random.
- Output: [CLS] A [SEP] B [SEP], token_type_ids 0 through the first [SEP] and 1 after it, and
  next_sentence_label 0 when B really follows A in the document, 1 when B is random (the Hugging Face
  convention; Google's `is_random_next` agrees: 1 = random).
- A document of a single sentence cannot give a real pair, and pairing it with itself would teach NSP
  nonsense; it becomes MLM-only instances ([CLS] A [SEP]) with next_sentence_label -100 (ignored by
  cross-entropy's default ignore_index), so its text still trains MLM.

MLM-only mode (`nsp=False`, RoBERTa style): each document's sentences are packed into chunks of up to
`max_seq_length - 2` tokens ([CLS] chunk [SEP]), a sentence longer than that is cut into pieces; no label.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from bert.batch import IGNORE_INDEX

NO_NSP_LABEL = IGNORE_INDEX
"""next_sentence_label of an instance that carries no NSP task (a single-sentence document)."""
IS_NEXT = 0
"""next_sentence_label when B is the real continuation of A."""
IS_RANDOM = 1
"""next_sentence_label when B comes from another document."""

Sentence = Sequence[int]
Document = Sequence[Sentence]


@dataclass
class Instance:
    """One training sequence before padding and masking."""

    input_ids: list[int]
    token_type_ids: list[int]
    next_sentence_label: int | None = None


def truncate_seq_pair(
    tokens_a: list[int], tokens_b: list[int], max_num_tokens: int, rng: random.Random
) -> None:
    """Trim A and B in place until they fit: always the longer one, from its front or back at random."""
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        # Random ends avoid always cutting the same side, which would bias what the model sees near [SEP].
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def _concat(sentences: Sequence[Sentence]) -> list[int]:
    out: list[int] = []
    for sentence in sentences:
        out.extend(sentence)
    return out


def _pair(tokens_a: list[int], tokens_b: list[int], cls_id: int, sep_id: int, label: int) -> Instance:
    input_ids = [cls_id, *tokens_a, sep_id, *tokens_b, sep_id]
    first = len(tokens_a) + 2  # [CLS] A [SEP] are segment 0
    return Instance(input_ids, [0] * first + [1] * (len(tokens_b) + 1), label)


def _single(tokens: list[int], cls_id: int, sep_id: int, label: int | None) -> Instance:
    return Instance([cls_id, *tokens, sep_id], [0] * (len(tokens) + 2), label)


def _target_length(max_num_tokens: int, short_seq_prob: float, rng: random.Random) -> int:
    if rng.random() < short_seq_prob:
        return rng.randint(2, max_num_tokens)
    return max_num_tokens


def _random_other_document(
    documents: Sequence[Document], document_index: int, rng: random.Random
) -> Document | None:
    """A random document other than `document_index` (None when there is none with text)."""
    if len(documents) < 2:
        return None
    for _ in range(10):
        other = rng.randrange(len(documents) - 1)
        other += other >= document_index  # uniform over the others, never the document itself
        if any(len(sentence) > 0 for sentence in documents[other]):
            return documents[other]
    return None


def create_nsp_instances(
    documents: Sequence[Document],
    document_index: int,
    max_seq_length: int,
    short_seq_prob: float,
    cls_id: int,
    sep_id: int,
    rng: random.Random,
) -> list[Instance]:
    """NSP pairs from `documents[document_index]`; random B sentences come from the other `documents`."""
    document = [s for s in documents[document_index] if len(s) > 0]
    max_num_tokens = max_seq_length - 3
    if not document:
        return []
    if len(document) == 1:
        return _mlm_chunks(document, max_seq_length, cls_id, sep_id, NO_NSP_LABEL)

    target_length = _target_length(max_num_tokens, short_seq_prob, rng)
    instances: list[Instance] = []
    chunk: list[Sentence] = []
    chunk_length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_length += len(document[i])
        if i == len(document) - 1 or chunk_length >= target_length:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = _concat(chunk[:a_end])
            other = None
            if len(chunk) == 1 or rng.random() < 0.5:
                other = _random_other_document(documents, document_index, rng)
            if other is not None:
                other = [s for s in other if len(s) > 0]
                target_b_length = max(1, target_length - len(tokens_a))
                tokens_b: list[int] = []
                for sentence in other[rng.randrange(len(other)) :]:
                    tokens_b.extend(sentence)
                    if len(tokens_b) >= target_b_length:
                        break
                i -= len(chunk) - a_end  # the unused sentences of the chunk are read again
                label = IS_RANDOM
            elif len(chunk) >= 2:
                tokens_b = _concat(chunk[a_end:])
                label = IS_NEXT
            else:
                tokens_b = []  # a lone sentence and no other document: MLM only
                label = NO_NSP_LABEL
            if tokens_b:
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                instances.append(_pair(tokens_a, tokens_b, cls_id, sep_id, label))
            else:
                instances.extend(_mlm_chunks([tokens_a], max_seq_length, cls_id, sep_id, NO_NSP_LABEL))
            chunk = []
            chunk_length = 0
            target_length = _target_length(max_num_tokens, short_seq_prob, rng)
        i += 1
    return instances


def _mlm_chunks(
    document: Sequence[Sentence], max_seq_length: int, cls_id: int, sep_id: int, label: int | None
) -> list[Instance]:
    budget = max_seq_length - 2
    instances: list[Instance] = []
    chunk: list[int] = []
    for sentence in document:
        if chunk and len(chunk) + len(sentence) > budget:
            instances.append(_single(chunk, cls_id, sep_id, label))
            chunk = []
        if len(sentence) > budget:  # a sentence longer than a sequence is cut into full pieces
            pieces = [list(sentence[k : k + budget]) for k in range(0, len(sentence), budget)]
            instances.extend(_single(piece, cls_id, sep_id, label) for piece in pieces[:-1])
            chunk = pieces[-1]
        else:
            chunk.extend(sentence)
    if chunk:
        instances.append(_single(chunk, cls_id, sep_id, label))
    return instances


def create_mlm_instances(document: Document, max_seq_length: int, cls_id: int, sep_id: int) -> list[Instance]:
    """MLM-only instances: whole sentences packed up to `max_seq_length` tokens, [CLS] chunk [SEP]."""
    return _mlm_chunks([s for s in document if len(s) > 0], max_seq_length, cls_id, sep_id, None)


def create_instances(
    documents: Sequence[Document],
    max_seq_length: int,
    short_seq_prob: float,
    nsp: bool,
    dupe_factor: int,
    cls_id: int,
    sep_id: int,
    rng: random.Random,
) -> list[Instance]:
    """All instances of a group of documents, `dupe_factor` passes.

    MLM-only chunks do not depend on the random state, so they are made once whatever `dupe_factor` says (with
    dynamic masking every epoch already sees new masks).
    """
    instances: list[Instance] = []
    for _ in range(dupe_factor if nsp else 1):
        for index, document in enumerate(documents):
            if nsp:
                instances.extend(
                    create_nsp_instances(
                        documents, index, max_seq_length, short_seq_prob, cls_id, sep_id, rng
                    )
                )
            else:
                instances.extend(create_mlm_instances(document, max_seq_length, cls_id, sep_id))
    return instances
