"""Fault tolerance of pretraining: exact resume after SIGKILL and SIGTERM, data position, broken checkpoints."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from bert import checkpoint as ckpt
from bert.errors import UserError
from bert.sampler import ShardedBatchSampler
from tests.pretrain_utils import metrics, pretrain_here, recorded_ids, run_cli

# Dropout stays on: an exact resume must restore the RNG too. Evaluation every 2 steps; the data order is
# recorded (record_ids) by every run.
RUN = ("train.eval_every=2",)

pytestmark = pytest.mark.e2e  # every test here runs whole pretraining jobs


@pytest.fixture(scope="module")
def cache(tiny_data) -> Path:
    return tiny_data


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory) -> Path:
    """An uninterrupted run of 6 steps."""
    run = tmp_path_factory.mktemp("reference")
    pretrain_here(cache, run, *RUN, record_ids=True)
    return run


def _state(run: Path, step: int = 6) -> dict:
    folder = ckpt.step_folder(run, step)
    return {
        "model": (folder / ckpt.MODEL).read_bytes(),
        "optimizer": ckpt.load_state_tree(folder / ckpt.OPTIMIZER_TENSORS, folder / ckpt.OPTIMIZER_STATE),
        "rng": (folder / ckpt.rng_file(0)).read_bytes(),
        "data": ckpt.read_meta(folder)["data"],
    }


def _next_batch(cache: Path, run: Path, step: int = 6):
    """The batch training would read next, from the data position saved in the checkpoint."""
    from bert.config import DataConfig
    from bert.data.collator import build_collator
    from bert.data.prepare import load_prepared
    from bert.sampler import EpochDataset

    position = ckpt.read_meta(ckpt.step_folder(run, step))["data"]
    prepared = next(p for p in cache.iterdir() if (p / "meta.json").exists())
    splits, _ = load_prepared(prepared)
    sampler = ShardedBatchSampler(len(splits["train"]), 4, 1, 0, 42, position["epoch"], position["index"])
    keys = next(iter(sampler))
    collator = build_collator(prepared, DataConfig(max_predictions_per_seq=5), seed=42)
    return collator([EpochDataset(splits["train"])[key] for key in keys])


def _check_equal(a: bytes, b: bytes, what: str) -> None:
    """Raise unless two byte strings are equal. Not `assert a == b`: on failure pytest would diff the two
    megabyte-long values with difflib, which is quadratic and ran for over 30 minutes on CI."""
    if a != b:
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        raise AssertionError(
            f"{what} differ (lengths {len(a)} and {len(b)}, first difference at byte {first})"
        )


def _assert_same(a: dict, b: dict) -> None:
    _check_equal(a["model"], b["model"], "model weights")
    assert a["data"] == b["data"], "data positions differ"
    _check_equal(a["rng"], b["rng"], "RNG states")
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for key in opt_a:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a[key][name], opt_b[key][name]), f"optimizer {name} of {key} differs"


def _refinalize(folder: Path, meta: dict) -> None:
    """Rewrite a checkpoint's meta.json and its marker (keeps it complete and intact)."""
    (folder / ckpt.META).write_text(json.dumps(meta))
    ckpt.write_marker(folder)


def test_sigkill_then_rerun_is_bit_identical(cache, reference, tmp_path):
    run = tmp_path / "run"
    killed = run_cli(cache, run, *RUN, record_ids=True, faults=("SIGKILL@5",))
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert ckpt.latest_checkpoint(run) == ckpt.step_folder(run, 4)
    # A broken newer checkpoint (truncated weights, marker present) must be ignored in favour of step 4.
    broken = ckpt.step_folder(run, 5)
    shutil.copytree(ckpt.step_folder(run, 4), broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = pretrain_here(cache, run, *RUN, record_ids=True)  # the same command again
    assert result["step"] == 6 and not result["stopped"]
    _assert_same(_state(run), _state(reference))
    a, b = _next_batch(cache, run), _next_batch(cache, reference)
    fields = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) is not None]
    same = lambda x, y: torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y  # noqa: E731
    assert fields and all(same(getattr(a, k), getattr(b, k)) for k in fields)


def test_negative_control_data_position_not_restored(cache, reference, tmp_path):
    run = tmp_path / "run"
    assert pretrain_here(cache, run, *RUN, record_ids=True, faults=("SIGTERM@4",))["stopped"]
    folder = ckpt.step_folder(run, 4)
    meta = ckpt.read_meta(folder)
    meta["data"].update(epoch=0, index=0, examples=0)  # as if the loader restarted from the beginning
    _refinalize(folder, meta)
    pretrain_here(cache, run, *RUN, record_ids=True)
    with pytest.raises(AssertionError, match="differ"):
        _assert_same(_state(run), _state(reference))


@pytest.mark.parametrize("where,saved", [("SIGTERM@3", 3), ("SIGTERM@eval:4", 4)])
def test_sigterm_saves_the_current_step_and_resumes_exactly(cache, reference, tmp_path, where, saved):
    run = tmp_path / "run"
    if where == "SIGTERM@3":  # through the CLI: the exit status must be 0
        stopped = run_cli(cache, run, *RUN, record_ids=True, faults=(where,))
        assert stopped.returncode == 0, stopped.stderr[-2000:]
        assert "stop signal" in stopped.stdout
    else:
        assert pretrain_here(cache, run, *RUN, record_ids=True, faults=(where,))["stopped"]
    assert ckpt.latest_checkpoint(run) == ckpt.step_folder(run, saved)
    assert not (run / "export").exists()
    pretrain_here(cache, run, *RUN, record_ids=True)
    _assert_same(_state(run), _state(reference))
    steps = [entry["step"] for entry in recorded_ids(run)]
    assert steps == [1, 2, 3, 4, 5, 6]  # each step's data consumed once, none replayed


@pytest.mark.parametrize("workers", [0, 2])
def test_no_sample_repeated_or_skipped_across_resumes(cache, tmp_path, workers):
    from bert.data.prepare import load_prepared

    prepared = next(p for p in cache.iterdir() if (p / "meta.json").exists())
    ids = load_prepared(prepared)[0]["train"]["id"]  # the recorded ids are the examples' stable `id`s
    per_epoch = len(ids) // 16
    steps = per_epoch + 5
    run = tmp_path / "run"
    common = (
        "train.batch_size=16",
        f"train.max_steps={steps}",
        "train.save_every=0",
        f"train.num_workers={workers}",
        "train.eval_batches=1",
    )
    # stop within epoch 0, exactly at its end, and just after it; then finish
    for stop in (6, per_epoch, per_epoch + 2):
        assert pretrain_here(cache, run, *common, record_ids=True, faults=(f"SIGTERM@{stop}",))["stopped"]
    assert pretrain_here(cache, run, *common, record_ids=True)["step"] == steps
    consumed = [tuple(pair) for entry in recorded_ids(run) for pair in entry["examples"]]
    expected_stream = iter(ShardedBatchSampler(len(ids), 16, 1, 0, seed=42))
    expected = [(e, ids[i]) for _ in range(steps) for e, i in next(expected_stream)]
    assert consumed == expected
    epoch0 = [i for e, i in consumed if e == 0]
    assert len(epoch0) == len(set(epoch0)) == per_epoch * 16
    epoch1 = [i for e, i in consumed if e == 1]
    assert len(epoch1) == len(set(epoch1)) == 5 * 16
    assert [entry["step"] for entry in recorded_ids(run)] == list(range(1, steps + 1))


# ------------------------------------------------------------------------------------ elastic resume

ELASTIC = (
    "model.hidden_dropout_prob=0",
    "model.attention_probs_dropout_prob=0",
    "optimizer.schedule=constant",  # the lr of a step must not depend on where the first launch stopped
    "train.log_every=1",
)


def _examples_per_step(run_dir, ranks) -> dict[int, list]:
    steps: dict[int, list] = {}
    for rank in ranks:
        for line in recorded_ids(run_dir, rank):
            steps.setdefault(line["step"], []).extend(tuple(pair) for pair in line["examples"])
    return {step: sorted(pairs) for step, pairs in steps.items()}


def _losses(run_dir) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in metrics(run_dir) if "train/loss" in m}


@pytest.mark.e2e
@pytest.mark.parametrize("first,second", [((2, 4, 1), (1, 4, 2)), ((1, 8, 1), (2, 4, 1))])
def test_a_run_resumes_on_another_number_of_processes(cache, tmp_path, first, second):
    """(processes, per-device batch, accumulation) changes between two launches with the same global batch:
    every step takes the same examples as an uninterrupted run, and the losses agree."""

    def launch(run, split, steps):
        n, batch, k = split
        extra = (*ELASTIC, f"train.batch_size={batch}", f"train.gradient_accumulation_steps={k}",
                 f"train.max_steps={steps}")  # fmt: skip
        done = run_cli(cache, run, *extra, record_ids=True, nproc=n)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    reference = tmp_path / "reference"
    launch(reference, first, 6)
    run = tmp_path / "run"
    launch(run, first, 3)
    done = launch(run, second, 6)
    assert "resumed from" in done.stdout
    ranks = lambda split: range(split[0])  # noqa: E731
    ours = _examples_per_step(run, set(ranks(first)) | set(ranks(second)))
    assert ours == _examples_per_step(reference, ranks(first))
    a, b = _losses(run), _losses(reference)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(abs(a[s] - b[s]) <= 1e-3 * abs(b[s]) for s in a), (a, b)


@pytest.mark.e2e
def test_a_changed_global_batch_is_refused_in_one_line(cache, tmp_path):
    run = tmp_path / "run"
    pretrain_here(cache, run, "train.max_steps=2", "train.batch_size=4")
    with pytest.raises(UserError) as err:
        pretrain_here(
            cache, run, "train.max_steps=4", "train.batch_size=4", "train.gradient_accumulation_steps=2"
        )
    message = str(err.value)
    assert (
        "\n" not in message and "the global batch" in message and "4 = 4 x 1 x 1 -> 8 = 4 x 2 x 1" in message
    )


@pytest.mark.e2e
def test_a_moved_run_folder_resumes_from_its_own_config(cache, tmp_path, capsys):
    from bert.cli import main
    from tests.pretrain_utils import reset_accelerate

    first = tmp_path / "first"
    pretrain_here(cache, first, "train.max_steps=2")
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    reset_accelerate()
    try:
        assert main(["pretrain", str(moved / "config.yaml"), "train.max_steps=3"]) == 0
    finally:
        reset_accelerate()
    out = capsys.readouterr().out
    assert f"resuming in {moved}" in out and "resumed from" in out and "(step 2," in out
    assert ckpt.step_folder(moved, 3).exists() and not first.exists()
