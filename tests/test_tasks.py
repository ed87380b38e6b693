"""Task readers: every GLUE layout on small hand-made files, custom files, HF datasets, synthetic, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bert.config import TaskConfig
from bert.errors import UserError
from bert.tasks import GLUE_TASKS, build_synthetic_pairs, load_task

SHARED_MRPC = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "MRPC"


def write_tsv(path: Path, header: list[str], rows: list[list[str]], bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join("\t".join(r) for r in [header, *rows]) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def glue_task(name: str, folder: Path, **kwargs):
    return load_task(TaskConfig(name=name, data_dir=str(folder), **kwargs))


# ------------------------------------------------------------------------------------------ GLUE layouts


def test_mrpc_layout_with_bom_and_literal_quotes(tmp_path):
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    write_tsv(
        tmp_path / "train.tsv",
        header,
        [
            ["1", "11", "12", 'He said " the witness " lied .', "The witness lied ."],
            ["0", "21", "22", "a", "b"],
        ],
        bom=True,
    )
    write_tsv(tmp_path / "dev.tsv", header, [["0", "31", "32", '"open quote only', "x"]], bom=True)
    write_tsv(
        tmp_path / "test.tsv",
        ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        [["7", "1", "2", "c", "d"]],
    )
    task = glue_task("mrpc", tmp_path)
    train = task.read("train")
    assert train.text_a == ['He said " the witness " lied .', "a"]  # quotes are text, not CSV quoting
    assert train.text_b == ["The witness lied .", "b"]
    assert train.labels.tolist() == [1, 0]
    assert task.read("dev").text_a == ['"open quote only']
    test = task.read("test")
    assert test.labels is None and test.ids == ["7"]
    assert task.main_metric == "f1" and task.metrics == ("accuracy", "f1")


@pytest.mark.parametrize(
    "name, header, row, a, b, label",
    [
        (
            "rte",
            ["index", "sentence1", "sentence2", "label"],
            ["0", "A.", "B.", "not_entailment"],
            "A.",
            "B.",
            1,
        ),
        (
            "qnli",
            ["index", "question", "sentence", "label"],
            ["0", "Why?", "So.", "entailment"],
            "Why?",
            "So.",
            0,
        ),
        ("wnli", ["index", "sentence1", "sentence2", "label"], ["0", "It.", "That.", "1"], "It.", "That.", 1),
        (
            "qqp",
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            ["5", "1", "2", "How?", "How so?", "1"],
            "How?",
            "How so?",
            1,
        ),
        (
            "mnli",
            ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2"]
            + ["label1", "gold_label"],
            ["0", "1", "1e", "fiction", "(", "(", "(", "(", "P.", "H.", "neutral", "contradiction"],
            "P.",
            "H.",
            2,
        ),
    ],
)
def test_glue_classification_layouts(tmp_path, name, header, row, a, b, label):
    spec = GLUE_TASKS[name]
    write_tsv(tmp_path / "train.tsv", header, [row])
    for split in spec.dev_splits:
        write_tsv(tmp_path / f"{split}.tsv", header, [row, row])
    task = glue_task(name, tmp_path)
    train = task.read("train")
    assert (train.text_a, train.text_b, train.labels.tolist()) == ([a], [b], [label])
    assert task.split_names("dev") == list(spec.dev_splits)
    for split in task.split_names("dev"):
        assert len(task.read(split)) == 2


def test_mnli_has_matched_and_mismatched_dev_and_test(tmp_path):
    header = ["index", "sentence1", "sentence2", "label1", "label2", "gold_label"]
    for split in ("train", "dev_matched", "dev_mismatched"):
        write_tsv(tmp_path / f"{split}.tsv", header, [["0", "p", "h", "entailment", "neutral", "entailment"]])
    write_tsv(tmp_path / "test_matched.tsv", ["index", "sentence1", "sentence2"], [["9", "p", "h"]])
    task = glue_task("mnli", tmp_path)
    assert task.split_names("dev") == ["dev_matched", "dev_mismatched"]
    assert task.split_names("test") == ["test_matched", "test_mismatched"]
    assert task.has_split("test_matched") and not task.has_split("test_mismatched")
    assert task.read("test_matched").ids == ["9"]
    assert task.labels == ["entailment", "neutral", "contradiction"]


def test_stsb_is_regression(tmp_path):
    header = [
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
    ]
    write_tsv(
        tmp_path / "train.tsv", header + ["score"], [["0", "g", "f", "y", "0", "s", "s", "A", "B", "3.800"]]
    )
    write_tsv(tmp_path / "test.tsv", header, [["4", "g", "f", "y", "0", "s", "s", "A", "B"]])
    task = glue_task("stsb", tmp_path)
    assert task.is_regression and task.num_labels == 1 and task.main_metric == "pearson"
    train = task.read("train")
    assert train.labels.dtype == np.float32 and train.labels.tolist() == [pytest.approx(3.8)]
    assert task.read("test").labels is None


def test_qqp_skips_malformed_rows_and_counts_them(tmp_path):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    write_tsv(tmp_path / "train.tsv", header, [["1", "1", "2", "q", "r", "0"], ["2", "3", "4", "broken"]])
    train = glue_task("qqp", tmp_path).read("train")
    assert len(train) == 1 and train.skipped == 1


@pytest.mark.skipif(not SHARED_MRPC.is_dir(), reason="../shared/data/glue/MRPC is absent")
def test_real_mrpc_files():
    task = glue_task("mrpc", SHARED_MRPC)
    train, dev = task.read("train"), task.read("dev")
    assert (len(train), len(dev)) == (3667, 408)
    assert set(np.unique(train.labels)) == {0, 1}
    assert not task.has_split("test")


# ---------------------------------------------------------------------------------------- custom files


def test_custom_csv_with_quoting_and_column_mapping(tmp_path):
    (tmp_path / "train.csv").write_text('q,a,y\n"Hello, world","Fine, thanks",yes\nx,y,no\n')
    task = load_task(
        TaskConfig(
            name="mine",
            train_file=str(tmp_path / "train.csv"),
            text_a_column="q",
            text_b_column="a",
            label_column="y",
        )
    )
    train = task.read("train")
    assert train.text_a == ["Hello, world", "x"] and train.text_b == ["Fine, thanks", "y"]
    assert task.labels == ["no", "yes"]  # inferred from the train file, sorted
    assert train.labels.tolist() == [1, 0]


def test_custom_jsonl_and_parquet(tmp_path):
    rows = [
        {"sentence1": "a", "sentence2": "b", "label": 1},
        {"sentence1": "c", "sentence2": "d", "label": 0.0},
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sentence1": ["e"], "sentence2": ["f"], "label": [1]}), tmp_path / "dev.parquet")
    task = load_task(
        TaskConfig(name="pairs", data_dir=str(tmp_path), train_file="train.jsonl", validation_file="dev.parquet",
                   labels=["0", "1"])
    )  # fmt: skip
    assert task.read("train").labels.tolist() == [1, 0]  # 0.0 is the label '0'
    assert task.read("dev").text_a == ["e"] and task.read("dev").labels.tolist() == [1]
    assert task.split_names("dev") == ["dev"]


def test_hf_dataset_class_ids_map_to_task_labels():
    import datasets

    features = datasets.Features(
        {
            "sentence1": datasets.Value("string"),
            "sentence2": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]),
            "idx": datasets.Value("int32"),
        }
    )
    data = datasets.Dataset.from_dict(
        {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [1, 0], "idx": [10, 11]},
        features=features,
    )
    task = load_task(TaskConfig(name="mrpc", hf_dataset="glue/mrpc"))
    examples = task.from_hf_dataset(data, "glue/mrpc[validation]")
    assert examples.labels.tolist() == [1, 0] and examples.ids == ["10", "11"]
    unlabeled = task.from_hf_dataset(
        data.cast_column("label", datasets.Value("int64")).map(lambda r: {"label": -1}), "t"
    )
    assert unlabeled.labels is None


@pytest.mark.parametrize(
    "name, expected",
    [
        ("nyu-mll/glue:mrpc", ("nyu-mll/glue", "mrpc")),
        ("SetFit/mrpc", ("SetFit/mrpc", None)),  # an owner/name, not a dataset 'SetFit' with config 'mrpc'
        ("glue/mrpc", ("nyu-mll/glue", "mrpc")),  # the GLUE shorthand of the docs
        ("Salesforce/wikitext:wikitext-103-raw-v1", ("Salesforce/wikitext", "wikitext-103-raw-v1")),
        ("imdb", ("imdb", None)),
    ],
)
def test_hub_names_keep_their_owner_and_take_a_config_after_a_colon(name, expected):
    from bert.data.records import hub_name

    assert hub_name(name) == expected


def test_hf_dataset_may_be_a_local_folder_saved_by_datasets(tmp_path):
    import datasets

    rows = {"sentence1": ["a b", "c d"], "sentence2": ["e", "f g"], "label": [1, 0], "idx": [0, 1]}
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict(rows)}
    ).save_to_disk(str(tmp_path / "mrpc_local"))
    task = load_task(TaskConfig(name="mrpc", hf_dataset=str(tmp_path / "mrpc_local")))
    assert task.read("train").text_a == ["a b", "c d"] and task.read("dev").labels.tolist() == [1, 0]
    assert task.has_split("dev") and not task.has_split("test")


# ------------------------------------------------------------------------------------------- synthetic


def test_synthetic_pairs_are_seeded_balanced_and_topical():
    import random

    from bert.data.synthetic import synthetic_documents

    docs = synthetic_documents(80, seed=3)
    a1 = build_synthetic_pairs(docs, 200, random.Random(0))
    a2 = build_synthetic_pairs(docs, 200, random.Random(0))
    assert a1 == a2
    text_a, text_b, labels = a1
    assert len(labels) == 200 and 70 < sum(labels) < 130
    topic_of = {s: d.topic for d in docs for s in d.sentences}
    for a, b, y in zip(text_a, text_b, labels):
        assert (topic_of[a] == topic_of[b]) == bool(y)


def test_synthetic_task_splits_by_document():
    cfg = TaskConfig(name="synthetic", synthetic_pairs=100)
    task = load_task(cfg)
    train, dev = task.read("train"), task.read("dev")
    assert (len(train), len(dev)) == (100, 20)
    assert train.text_a[:20] != dev.text_a  # different documents
    again = load_task(cfg).read("dev")  # seeded: the same pairs every time
    assert (again.text_a, again.text_b, again.labels.tolist()) == (
        dev.text_a,
        dev.text_b,
        dev.labels.tolist(),
    )


# ------------------------------------------------------------------------------------------- bad input


def test_missing_column_names_the_file(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", ["index", "sentence1", "label"], [["0", "a", "0"]])
    with pytest.raises(
        UserError, match=rf"{path}: no column 'sentence2' \(columns: index, sentence1, label\)"
    ):
        glue_task("wnli", tmp_path).read("train")


def test_label_outside_the_task_names_file_and_line(tmp_path):
    path = write_tsv(
        tmp_path / "train.tsv",
        ["index", "sentence1", "sentence2", "label"],
        [["0", "a", "b", "1"], ["1", "a", "b", "maybe"]],
    )
    with pytest.raises(UserError, match=rf"{path}:3: label 'maybe' is not one of the task's labels \(0, 1\)"):
        glue_task("wnli", tmp_path).read("train")


def test_empty_split_and_missing_file(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", ["index", "sentence1", "sentence2", "label"], [])
    with pytest.raises(UserError, match=rf"{path}: split 'train' has no examples"):
        glue_task("rte", tmp_path).read("train")
    with pytest.raises(UserError, match=rf"{tmp_path / 'dev.tsv'}: file not found"):
        glue_task("rte", tmp_path).read("dev")


def test_short_row_and_non_numeric_score(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", ["index", "sentence1", "sentence2", "label"], [["0", "a"]])
    with pytest.raises(UserError, match=rf"{path}:2: 2 fields, the header has 4"):
        glue_task("rte", tmp_path).read("train")
    path = write_tsv(tmp_path / "s" / "train.tsv", ["sentence1", "sentence2", "score"], [["a", "b", "high"]])
    with pytest.raises(UserError, match=rf"{path}:2: label 'high' is not a number"):
        glue_task("stsb", tmp_path / "s").read("train")


def test_a_row_with_an_extra_tab_is_an_error_naming_its_line(tmp_path):
    """A tab inside sentence 1 used to shift its tail into sentence 2 without a word."""
    header = ["index", "sentence1", "sentence2", "label"]
    path = write_tsv(
        tmp_path / "train.tsv", header, [["0", "a", "b", "1"], ["1", "half\tof one", "two", "0"]]
    )
    with pytest.raises(UserError, match=rf"{path}:3: 5 fields, the header has 4 \(a tab inside a field\?\)"):
        glue_task("rte", tmp_path).read("train")


@pytest.mark.parametrize("typo, meant", [("mrcp", "mrpc"), ("stsb2", "stsb"), ("rtee", "rte")])
def test_a_misspelled_glue_task_is_one_line_with_the_name_meant(typo, meant, tmp_path):
    with pytest.raises(UserError, match=f"task.name={typo}: not a GLUE task; did you mean '{meant}'"):
        load_task(TaskConfig(name=typo, data_dir=str(tmp_path)))
    custom = load_task(TaskConfig(name=typo, labels=["0", "1"], data_dir=str(tmp_path)))
    assert custom.name == typo  # a custom task of that name says so with its labels
