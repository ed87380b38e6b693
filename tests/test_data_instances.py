"""NSP and MLM-only instances: Google's semantics on hand-made token documents."""

import random

import pytest

from bert.data.instances import (
    IS_NEXT,
    IS_RANDOM,
    NO_NSP_LABEL,
    create_instances,
    create_mlm_instances,
    create_nsp_instances,
    truncate_seq_pair,
)

CLS, SEP = 2, 3


def make_documents(num_docs, rng, max_sentences=12):
    """Documents whose tokens encode (document, sentence, position) so pairs can be traced back."""
    docs = []
    for d in range(num_docs):
        sentences = []
        for s in range(rng.randint(2, max_sentences)):
            length = rng.randint(3, 25)
            sentences.append([100_000 * (d + 1) + 1_000 * s + k for k in range(length)])
        docs.append(sentences)
    return docs


def split_pair(instance):
    ids = instance.input_ids
    first_sep = ids.index(SEP)
    return ids[1:first_sep], ids[first_sep + 1 : -1]


@pytest.mark.parametrize("seed", range(5))
def test_nsp_structure_lengths_and_labels(seed):
    rng = random.Random(seed)
    docs = make_documents(30, rng)
    instances = create_instances(docs, 64, 0.1, True, 2, CLS, SEP, random.Random(seed))
    labels = [i.next_sentence_label for i in instances]
    assert set(labels) <= {IS_NEXT, IS_RANDOM}
    assert 0.35 < labels.count(IS_RANDOM) / len(labels) < 0.7
    for inst in instances:
        ids, types = inst.input_ids, inst.token_type_ids
        assert len(ids) <= 64 and len(ids) == len(types)
        assert ids[0] == CLS and ids[-1] == SEP and ids.count(SEP) == 2 and CLS not in ids[1:]
        first_sep = ids.index(SEP)
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
        a, b = split_pair(inst)
        assert a and b
        doc_a, doc_b = {t // 100_000 for t in a}, {t // 100_000 for t in b}
        assert len(doc_a) == 1 and len(doc_b) == 1
        if inst.next_sentence_label == IS_NEXT:
            # "is next": B continues A in the same document (truncation may trim the meeting ends).
            assert doc_a == doc_b
            assert (a[-1] % 100_000) < (b[0] % 100_000)
        else:
            assert doc_a != doc_b


def test_is_next_pairs_are_consecutive_without_truncation():
    docs = [
        [[1000 + 10 * s + k for k in range(3)] for s in range(6)],
        [[9000 + k for k in range(3)] for _ in range(6)],
    ]
    for seed in range(20):
        for inst in create_nsp_instances(docs, 0, 128, 0.0, CLS, SEP, random.Random(seed)):
            if inst.next_sentence_label == IS_NEXT:
                a, b = split_pair(inst)
                assert a + b == sorted(a + b) and (b[0] - a[-1]) == 8  # next sentence starts where A ended


def test_same_seed_same_instances():
    docs = make_documents(10, random.Random(0))
    one = create_instances(docs, 48, 0.1, True, 3, CLS, SEP, random.Random(7))
    two = create_instances(docs, 48, 0.1, True, 3, CLS, SEP, random.Random(7))
    other = create_instances(docs, 48, 0.1, True, 3, CLS, SEP, random.Random(8))
    assert one == two and one != other


def test_single_sentence_document_is_mlm_only_never_paired_with_itself():
    docs = [[[10, 11, 12, 13]], [[20, 21], [22, 23]]]
    for seed in range(10):
        instances = create_nsp_instances(docs, 0, 32, 0.1, CLS, SEP, random.Random(seed))
        assert [i.input_ids for i in instances] == [[CLS, 10, 11, 12, 13, SEP]]
        assert instances[0].next_sentence_label == NO_NSP_LABEL and instances[0].token_type_ids == [0] * 6


def test_lone_document_gives_no_false_random_pairs():
    docs = [[[1, 1], [2, 2], [3, 3]]]
    instances = create_nsp_instances(docs, 0, 32, 0.0, CLS, SEP, random.Random(0))
    assert all(i.next_sentence_label in (IS_NEXT, NO_NSP_LABEL) for i in instances)


def test_truncate_seq_pair_trims_longer_side_both_ends():
    fronts = backs = 0
    for seed in range(50):
        a, b = list(range(10)), list(range(100, 103))
        truncate_seq_pair(a, b, 8, random.Random(seed))
        assert len(a) + len(b) == 8 and b == [100, 101, 102] and len(a) == 5
        fronts += a[0] > 0
        backs += a[-1] < 9
    assert fronts > 5 and backs > 5


def test_short_seq_prob_gives_shorter_sequences():
    docs = make_documents(40, random.Random(1), max_sentences=30)
    lengths = [
        len(i.input_ids) for i in create_instances(docs, 128, 1.0, True, 1, CLS, SEP, random.Random(0))
    ]
    full = [len(i.input_ids) for i in create_instances(docs, 128, 0.0, True, 1, CLS, SEP, random.Random(0))]
    assert sum(lengths) / len(lengths) < 0.8 * sum(full) / len(full)


def test_mlm_only_packs_contiguous_text():
    doc = [[1] * 5, [2] * 5, [3] * 5, [4] * 40]
    instances = create_mlm_instances(doc, 14, CLS, SEP)
    bodies = [i.input_ids[1:-1] for i in instances]
    assert bodies[0] == [1] * 5 + [2] * 5 and bodies[1] == [3] * 5
    assert bodies[2:] == [[4] * 12, [4] * 12, [4] * 12, [4] * 4]  # a long sentence is cut into full pieces
    assert all(i.next_sentence_label is None and set(i.token_type_ids) == {0} for i in instances)
    assert sum(bodies, []) == sum(doc, [])
