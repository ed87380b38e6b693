"""The synthetic corpus: deterministic, topic vocabularies disjoint, sentences with agreement."""

from bert.data.synthetic import _TOPICS, synthetic_document, synthetic_documents


def test_same_seed_same_documents_and_prefix_stable():
    assert synthetic_documents(50, seed=3) == synthetic_documents(50, seed=3)
    assert synthetic_documents(10, seed=3) == synthetic_documents(50, seed=3)[:10]
    assert synthetic_documents(20, seed=3) != synthetic_documents(20, seed=4)


def test_documents_have_topics_and_sentences():
    docs = synthetic_documents(300, seed=0)
    assert {d.topic for d in docs} == set(range(8))
    assert all(d.sentences and all(s.endswith(".") and s[0].isupper() for s in d.sentences) for d in docs)
    assert any(len(d.sentences) == 1 for d in docs)  # exercises the single-sentence rule downstream
    assert synthetic_document(7, seed=0) == docs[7]


def test_topic_vocabularies_are_disjoint_and_documents_use_their_own():
    content = [set(t.nouns) | set(t.verbs) | set(t.adjectives) | set(t.places) for t in _TOPICS]
    for i in range(len(content)):
        for j in range(i + 1, len(content)):
            assert not content[i] & content[j]
    for doc in synthetic_documents(40, seed=1):
        words = {w.strip(".,") for s in doc.sentences for w in s.lower().split()}
        others = set().union(*(content[t] for t in range(8) if t != doc.topic))
        assert not {w.removesuffix("es").removesuffix("s") for w in words} & others - content[doc.topic]


def test_number_agreement():
    for doc in synthetic_documents(100, seed=2):
        for sentence in doc.sentences:
            words = sentence.lower().split()
            if words[0] == "the" and words[3] in ("is", "are", "was", "were"):
                assert words[3] in ("is", "was")
            if words[0] in ("two", "three", "four", "five", "many", "some") and words[3] in (
                "is",
                "are",
                "was",
                "were",
            ):
                assert words[3] in ("are", "were")
