"""What each GLUE sentence-pair task is: its labels, metrics, column names and splits (`GLUE_TASKS`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """A task's fixed definition; the column names are those of its GLUE files."""

    name: str
    labels: tuple[str, ...] | None  # None: regression (one output)
    metrics: tuple[str, ...]
    main_metric: str
    text_a: str
    text_b: str
    label: str
    index: str = "index"  # id column of test.tsv, written back in the submission file
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    hf_columns: tuple[str, str] = ("sentence1", "sentence2")
    skip_malformed: bool = False  # QQP's train.tsv has a few rows with missing fields; GLUE skips them

    @property
    def is_regression(self) -> bool:
        return self.labels is None


GLUE_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            "mrpc", ("0", "1"), ("accuracy", "f1"), "f1", "#1 String", "#2 String", "Quality", index="index"
        ),
        TaskSpec(
            "rte",
            ("entailment", "not_entailment"),
            ("accuracy",),
            "accuracy",
            "sentence1",
            "sentence2",
            "label",
        ),
        TaskSpec("stsb", None, ("pearson", "spearman"), "pearson", "sentence1", "sentence2", "score"),
        TaskSpec(
            "qqp",
            ("0", "1"),
            ("accuracy", "f1"),
            "f1",
            "question1",
            "question2",
            "is_duplicate",
            index="id",
            hf_columns=("question1", "question2"),
            skip_malformed=True,
        ),
        TaskSpec(
            "mnli",
            ("entailment", "neutral", "contradiction"),  # the order of the Hugging Face `glue/mnli` labels
            ("accuracy",),
            "accuracy",
            "sentence1",
            "sentence2",
            "gold_label",
            dev_splits=("dev_matched", "dev_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
            hf_columns=("premise", "hypothesis"),
        ),
        TaskSpec(
            "qnli",
            ("entailment", "not_entailment"),
            ("accuracy",),
            "accuracy",
            "question",
            "sentence",
            "label",
            hf_columns=("question", "sentence"),
        ),
        TaskSpec("wnli", ("0", "1"), ("accuracy",), "accuracy", "sentence1", "sentence2", "label"),
        TaskSpec("synthetic", ("0", "1"), ("accuracy", "f1"), "accuracy", "sentence1", "sentence2", "label"),
    ]
}
"""Built-in tasks by name. Label order follows the Hugging Face `glue` datasets, so their ids map directly."""
