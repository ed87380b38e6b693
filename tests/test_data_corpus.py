"""Corpus readers: sentence splitting, layout detection, each format, bad input, the real corpus."""

import json
from pathlib import Path

import pytest

from bert.data.corpus import detect_layout, iter_documents, resolve_inputs
from bert.data.documents import CorpusStats
from bert.data.sentences import split_sentences
from bert.errors import UserError

SHARED_CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "corpus"


def read(paths, **kwargs):
    stats = CorpusStats()
    inputs = resolve_inputs([str(p) for p in paths], kwargs.pop("fmt", "auto"), stats)
    return [d.sentences for d in iter_documents(inputs, stats, **kwargs)], stats


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "Mr. Smith went to Washington. He met Dr. Jones there.",
            ["Mr. Smith went to Washington.", "He met Dr. Jones there."],
        ),
        ("It costs 3.5 dollars. That is cheap!", ["It costs 3.5 dollars.", "That is cheap!"]),
        ("Harry S. Truman spoke. The room listened.", ["Harry S. Truman spoke.", "The room listened."]),
        ('"Stop." She stopped. "Why?" he asked.', ['"Stop."', "She stopped.", '"Why?" he asked.']),
        ("He moved to the U.S. The next year he left.", ["He moved to the U.S.", "The next year he left."]),
        ("The U.S. Senate voted. It passed.", ["The U.S. Senate voted.", "It passed."]),
        ("Use e.g. apples. Or not?  Yes.", ["Use e.g. apples.", "Or not?", "Yes."]),
        ("no capital after. this stays one", ["no capital after. this stays one"]),
        ("  ", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_google_layout(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("First doc one.\nFirst doc two.\n\nSecond doc one.\nSecond doc two, longer.\n\n\n")
    docs, stats = read([path])
    assert docs == [["First doc one.", "First doc two."], ["Second doc one.", "Second doc two, longer."]]
    assert stats.layouts[str(path)] == "google"
    docs, _ = read([path], document_per_file=True)
    assert len(docs) == 1 and len(docs[0]) == 4


def test_free_layout_hard_wrapped(tmp_path):
    path = tmp_path / "book.txt"
    para = "The morning was cold and the road was long and the horses were\ntired of the road. The driver sang a song about the\nsea and the mountains, and nobody listened to him at all\n"
    path.write_text((para + "\n") * 4)
    docs, stats = read([path])
    assert stats.layouts[str(path)] == "free (hard-wrapped)"
    assert len(docs) == 1  # a free-text file is one document
    assert docs[0][:2] == [
        "The morning was cold and the road was long and the horses were tired of the road.",
        "The driver sang a song about the sea and the mountains, and nobody listened to him at all",
    ]
    docs, _ = read([path], document_per_file=False)
    assert len(docs) == 4


def test_free_layout_paragraph_per_line(tmp_path):
    path = tmp_path / "speech.txt"
    path.write_text("We meet today. The task is great and the hour is late. We shall not fail.\n" * 3)
    docs, stats = read([path])
    assert stats.layouts[str(path)] == "free"
    assert docs == [["We meet today.", "The task is great and the hour is late.", "We shall not fail."] * 3]


def test_detect_layout():
    assert detect_layout(["One sentence here.", "Another one there.", "And a third."]) == "google"
    assert detect_layout(["A first. A second. A third.", "More. Yes."]) == "free"


def test_jsonl_csv_parquet(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"body": "One. Two."}) + "\n\n" + json.dumps({"body": "Three."}) + "\n"
    )
    (tmp_path / "b.csv").write_text('id,body\n1,"Four. Five."\n2,Six.\n')
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["Seven. Eight.", None]}), tmp_path / "c.parquet")
    docs, stats = read([tmp_path / "a.jsonl", tmp_path / "b.csv", tmp_path / "c.parquet"], text_column="body")
    assert docs == [["One.", "Two."], ["Three."], ["Four.", "Five."], ["Six."], ["Seven.", "Eight."]]
    assert stats.documents == 5 and stats.sentences == 8


def test_hf_saved_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["Alpha one. Alpha two.", "Beta."]}).save_to_disk(
        str(tmp_path / "ds")
    )
    docs, _ = read([tmp_path / "ds"])
    assert docs == [["Alpha one.", "Alpha two."], ["Beta."]]


def test_folder_and_glob(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.txt").write_text("Ex one.\nEx two.\n")
    (tmp_path / "y.txt").write_text("Why one.\nWhy two.\n")
    (tmp_path / "README").write_text("not corpus")
    (tmp_path / ".hidden.txt").write_text("Hidden.\n")
    docs, stats = read([tmp_path])
    assert docs == [["Ex one.", "Ex two."], ["Why one.", "Why two."]]
    assert stats.skipped_files == [str(tmp_path / "README")]
    docs, _ = read([tmp_path / "*.txt"])
    assert docs == [["Why one.", "Why two."]]


def test_invalid_utf8_replaced_and_counted(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Caf\xe9 one.\nPlain two.\nna\xefve three.\n".encode("latin-1"))
    docs, stats = read([path])
    assert docs == [["Caf\ufffd one.", "Plain two.", "na\ufffdve three."]]
    assert stats.replaced_chars == 2 and stats.replaced_files == {str(path): 2}


def test_invalid_utf8_strict_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"fine\nCaf\xe9\n")
    with pytest.raises(UserError, match=r"latin1\.txt: line 2 is not valid UTF-8"):
        read([path], encoding_errors="strict")


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="missing.txt: no such file"):
        read([tmp_path / "missing.txt"])
    with pytest.raises(UserError, match="matches no file"):
        read([tmp_path / "*.nothing"])
    (tmp_path / "bin.txt").write_bytes(b"abc\x00\x01\x02" * 10)
    with pytest.raises(UserError, match="bin.txt: looks like a binary file"):
        read([tmp_path / "bin.txt"])
    (tmp_path / "bad.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl: line 1 has no text column 'text' \(found: content\)"):
        read([tmp_path / "bad.jsonl"])
    (tmp_path / "array.json").write_text('[{"text": "x"}]')
    with pytest.raises(UserError, match="array.json: line 1 is a JSON array.*JSON lines"):
        read([tmp_path / "array.json"])
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"bad.csv: no text column 'text' \(found: a, b\)"):
        read([tmp_path / "bad.csv"])


def test_megabyte_line_is_skipped_and_reported(tmp_path):
    path = tmp_path / "long.txt"
    path.write_bytes(b"Short one.\n" + b"x" * (1 << 20) * 2 + b"\nShort two.\n")
    docs, stats = read([path])
    assert docs == [["Short one.", "Short two."]]
    assert stats.skipped_lines == [f"{path}:2"]


@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason="../shared/data/corpus is absent")
def test_real_corpus_layouts_and_encoding():
    stats = CorpusStats()
    inputs = resolve_inputs(
        [
            str(SHARED_CORPUS / "abc"),
            str(SHARED_CORPUS / "gutenberg" / "austen-emma.txt"),
            str(SHARED_CORPUS / "gutenberg" / "chesterton-ball.txt"),
            str(SHARED_CORPUS / "state_union" / "1945-Truman.txt"),
        ],
        stats=stats,
    )
    docs = [d.sentences for d in iter_documents(inputs, stats)]
    layouts = {Path(k).name: v for k, v in stats.layouts.items()}
    assert layouts == {
        "rural.txt": "google",
        "science.txt": "google",
        "austen-emma.txt": "free (hard-wrapped)",
        "chesterton-ball.txt": "free (hard-wrapped)",
        "1945-Truman.txt": "free",
    }
    assert stats.replaced_files.keys() == {
        str(SHARED_CORPUS / "abc" / "science.txt"),
        str(SHARED_CORPUS / "gutenberg" / "chesterton-ball.txt"),
    }
    assert len(docs) > 100  # rural.txt separates articles by blank lines
    emma = next(d for d in docs if d[0].startswith("[Emma by Jane Austen"))
    assert any(s.startswith("Sixteen years had Miss Taylor been in Mr. Woodhouse's family") for s in emma)


def test_gzip_inputs(tmp_path):
    import gzip

    with gzip.open(tmp_path / "a.txt.gz", "wt") as handle:
        handle.write("Zipped one.\nZipped two.\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"text": "Json one. Json two."}) + "\n")
    docs, _ = read([tmp_path])
    assert docs == [["Zipped one.", "Zipped two."], ["Json one.", "Json two."]]
