"""Checkpoints you can trust and runs that cannot collide, end to end on the tiny pretraining run: each finding
of the checkpoint review is a test here (and in test_checkpoint.py for the parts on their own).

1. resuming never unpickles: a payload planted in any file of a checkpoint never runs;
2. damage is found by hash, named in one line, and the previous checkpoint is used; none left: one error;
3. resume=false in a used folder refuses; with overwrite=true the old run is removed first;
4. one run per folder (a lock); metrics.jsonl holds each step once after a crash and a resume;
5. a changed lr on resume applies from the resumed step, named in one line, recorded in config.yaml;
6. no checkpoint is written in a non-finite streak; "latest healthy" names a healthy one;
7. bad values are one line and exit status 2, before any data is prepared;
8. stale temp folders of dead prepares are removed, a live one's kept.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from bert import checkpoint as ckpt
from bert import fs
from bert.cli import main
from bert.errors import UserError
from bert.optim import Schedule
from tests.pretrain_utils import metrics, pretrain_here, run_cli, weights

pytestmark = pytest.mark.e2e

SAVE_EVERY_2 = ("train.save_every=2", "train.keep_last=null")


@pytest.fixture(scope="module")
def base_run(tiny_data, tmp_path_factory) -> Path:
    """6 steps, checkpoints at 2, 4 and 6 (kept), and the export."""
    run = tmp_path_factory.mktemp("base") / "run"
    pretrain_here(tiny_data, run, *SAVE_EVERY_2)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


# ----------------------------------------------------------------------------------- 1. no code runs


PLANTED = ["custom_checkpoint_0.pkl", "optimizer.bin", "random_states_0.pkl", "scheduler.bin", "scaler.pt"]


def test_a_pickle_payload_in_any_checkpoint_file_never_runs(tiny_data, base_run, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    payload = pickle.dumps(_Payload(marker))
    pickle.loads(payload)
    assert marker.exists(), "negative control: the payload runs when unpickled"
    marker.unlink()
    files = sorted(json.loads((ckpt.step_folder(base_run, 6) / ckpt.MARKER).read_text())) + PLANTED
    assert {ckpt.MODEL, ckpt.OPTIMIZER_TENSORS, ckpt.OPTIMIZER_STATE, ckpt.rng_file(0), ckpt.META} <= set(
        files
    )
    for i, name in enumerate(files):
        run = _copy(base_run, tmp_path / f"case{i}")
        folder = ckpt.step_folder(run, 6)
        (folder / name).write_bytes(payload)
        ckpt.write_marker(folder)  # the attacker updates the manifest: sizes and hashes match
        result = pretrain_here(tiny_data, run, *SAVE_EVERY_2, "train.max_steps=7")
        assert result["step"] == 7, name
        assert main(["export", str(folder), str(tmp_path / f"export{i}")]) in (0, 2), name
        assert not marker.exists(), f"code ran from {name}"
    capsys.readouterr()


# ---------------------------------------------------------------------------------- 2. damage is found


@pytest.mark.parametrize(
    "name,offset",
    [
        (ckpt.MODEL, 10),  # inside the safetensors header
        (ckpt.MODEL, -100),  # one weight byte: the same size
        (ckpt.OPTIMIZER_TENSORS, -100),
        (ckpt.OPTIMIZER_STATE, 5),
        (ckpt.rng_file(0), -4),
    ],
)
def test_a_flipped_byte_is_named_and_the_previous_checkpoint_is_used(
    tiny_data, base_run, tmp_path, capsys, name, offset
):
    run = _copy(base_run, tmp_path)
    path = ckpt.step_folder(run, 6) / name
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    result = pretrain_here(tiny_data, run, *SAVE_EVERY_2, "train.max_steps=7")
    out = capsys.readouterr()
    warning = [line for line in out.err.splitlines() if "step_0000006" in line]
    assert len(warning) == 1 and name in warning[0] and "trying the previous one" in warning[0]
    assert f"resumed from {ckpt.step_folder(run, 4)}" in out.out
    assert result["step"] == 7


def test_a_state_that_cannot_be_restored_falls_back_even_when_its_hash_matches(
    tiny_data, base_run, tmp_path, capsys
):
    run = _copy(base_run, tmp_path)
    folder = ckpt.step_folder(run, 6)
    (folder / ckpt.rng_file(0)).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")  # valid, empty
    meta = ckpt.read_meta(ckpt.step_folder(run, 4))
    del meta["data"]
    (ckpt.step_folder(run, 4) / ckpt.META).write_text(json.dumps(meta))
    for step in (4, 6):
        ckpt.write_marker(ckpt.step_folder(run, step))
    pretrain_here(tiny_data, run, *SAVE_EVERY_2, "train.max_steps=7")
    out = capsys.readouterr()
    assert "rng_0.safetensors: the RNG states cannot be restored" in out.out + out.err
    assert "step_0000004: meta.json: no data" in out.err
    assert f"resumed from {ckpt.step_folder(run, 2)}" in out.out


def test_with_no_usable_checkpoint_left_the_error_is_one_line(tiny_data, base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    for folder in ckpt.list_checkpoints(run):
        (folder / ckpt.MODEL).write_bytes(b"x" * (folder / ckpt.MODEL).stat().st_size)
    with pytest.raises(UserError) as err:
        pretrain_here(tiny_data, run, *SAVE_EVERY_2, "train.max_steps=7")
    assert "no usable checkpoint left (3 damaged)" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------ 3. resume=false and overwrite


def test_resume_false_in_a_used_folder_refuses_and_overwrite_starts_over(tiny_data, base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    before = sorted(p.name for p in (run / ckpt.CHECKPOINTS).iterdir())
    with pytest.raises(UserError) as err:
        pretrain_here(tiny_data, run, *SAVE_EVERY_2, "train.max_steps=4", "train.resume=false")
    assert "train.overwrite=true" in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in (run / ckpt.CHECKPOINTS).iterdir()) == before  # nothing touched
    pretrain_here(
        tiny_data, run, *SAVE_EVERY_2, "train.max_steps=4", "train.resume=false", "train.overwrite=true"
    )
    assert ckpt.list_checkpoints(run) == [ckpt.step_folder(run, 2), ckpt.step_folder(run, 4)]
    assert [m["step"] for m in metrics(run) if "train/loss" in m] == [1, 2, 3, 4]
    assert main(["export", str(run), str(tmp_path / "again")]) == 0
    ours, again = weights(run / "export"), weights(tmp_path / "again")
    assert all(torch.equal(ours[k], again[k]) for k in ours)


# ---------------------------------------------------------------------------- 4. one run, each step once


def test_a_second_run_on_the_same_folder_refuses_with_one_line(tiny_data, tmp_path):
    run = tmp_path / "run"
    with fs.RunLock(run):  # e.g. orphaned workers of a killed launcher still hold it
        with pytest.raises(UserError) as err:
            pretrain_here(tiny_data, run, "train.max_steps=2")
    assert "is in use by another run" in str(err.value) and "\n" not in str(err.value)
    assert not (run / ckpt.CHECKPOINTS).exists()
    assert pretrain_here(tiny_data, run, "train.max_steps=2")["step"] == 2  # the lock went with its holder


def test_metrics_hold_each_step_once_after_a_kill_and_a_resume(tiny_data, tmp_path):
    run = tmp_path / "run"
    killed = run_cli(tiny_data, run, "train.eval_every=2", faults=("SIGKILL@5",))
    assert killed.returncode == -9
    assert [m["step"] for m in metrics(run) if "train/loss" in m] == [1, 2, 3, 4]  # step 5 died half-way
    pretrain_here(tiny_data, run, "train.eval_every=2")
    logged = metrics(run)
    assert [m["step"] for m in logged if "train/loss" in m] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in logged if "eval/mlm_loss" in m] == [2, 4, 6]


# ------------------------------------------------------------------------------ 5. settings changed on resume


def test_a_changed_lr_applies_from_the_resumed_step_and_is_named(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain_here(tiny_data, run, "train.max_steps=4", "train.save_every=2")
    capsys.readouterr()
    pretrain_here(tiny_data, run, "train.max_steps=6", "train.save_every=2", "optimizer.lr=5e-4")
    printed = capsys.readouterr().out
    assert "optimizer.lr: 0.001 -> 0.0005" in printed and "train.max_steps: 4 -> 6" in printed
    lr_at = {m["step"]: m["train/lr"] for m in metrics(run) if "train/lr" in m}
    from bert.config import OptimizerConfig

    new = Schedule(OptimizerConfig(lr=5e-4, warmup_steps=2), 6)
    assert lr_at[5] == pytest.approx(new.lr(4)) and lr_at[6] == pytest.approx(new.lr(5))
    assert "lr: 0.0005" in (run / "config.yaml").read_text()
    assert ckpt.read_meta(ckpt.step_folder(run, 6))["config"]["optimizer"]["lr"] == 5e-4


def test_a_changed_model_shape_is_refused_naming_the_field(tiny_data, tmp_path):
    run = tmp_path / "run"
    pretrain_here(tiny_data, run, "train.max_steps=2")
    with pytest.raises(UserError, match="model.num_hidden_layers: 2 -> 3"):
        pretrain_here(tiny_data, run, "train.max_steps=4", "model.num_hidden_layers=3")


# --------------------------------------------------------------------------------- 6. non-finite streaks


def test_no_checkpoint_is_saved_during_a_non_finite_streak(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain_here(tiny_data, run, *SAVE_EVERY_2, faults=("nan@3", "nan@4"))
    assert ckpt.list_checkpoints(run) == [ckpt.step_folder(run, 2), ckpt.step_folder(run, 6)]
    assert "step 4: not saved, the last 2 step(s) were non-finite" in capsys.readouterr().out
    assert ckpt.read_meta(ckpt.step_folder(run, 6))["counters"]["skipped_steps"] == 2


def test_the_stop_after_a_streak_names_the_latest_healthy_checkpoint(tiny_data, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UserError) as err:
        pretrain_here(tiny_data, run, *SAVE_EVERY_2, "train.max_nonfinite_steps=2", faults=("nan@3", "nan@4"))
    assert f"latest healthy checkpoint: {ckpt.step_folder(run, 2)}" in str(err.value)
    assert ckpt.list_checkpoints(run) == [ckpt.step_folder(run, 2)]


# ------------------------------------------------------------------------------------------ 7. bad values


@pytest.mark.parametrize(
    "command,override,named",
    [
        ("pretrain", "optimizer.lr=-1", "optimizer.lr must be > 0"),
        ("pretrain", "train.batch_size=0", "train.batch_size must be at least 1"),
        ("pretrain", "data.validation_fraction=1.0", "data.validation_fraction must be in [0, 1)"),
        ("pretrain", "data.max_seq_length=1024", "data.max_seq_length must be at most model.max_position"),
        ("prepare", "data.masked_lm_prob=0", "data.masked_lm_prob must be in (0, 1)"),
        ("prepare", "data.max_predictions_per_seq=200", "data.max_predictions_per_seq must be below"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2_before_any_data(tmp_path, capsys, command, override, named):
    cache = tmp_path / "cache"
    code = main(
        [
            command,
            "configs/pretrain/demo.yaml",
            f"data.cache_dir={cache}",
            f"train.output_dir={tmp_path}/r",
            override,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and named in err and "\n" not in err and err.startswith(f"bert {command}: error: ")
    assert not cache.exists()


def test_a_finetune_length_above_the_models_position_table_is_one_line(tmp_path, capsys):
    from bert.model import BertConfig, BertForPreTraining

    BertForPreTraining(
        BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, max_position_embeddings=64)
    ).save_pretrained(tmp_path / "model")  # fmt: skip
    code = main(
        ["finetune", "configs/finetune/demo.yaml", f"model_path={tmp_path / 'model'}", "train.max_length=128"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "train.max_length must be at most the model's max_position_embeddings (64" in err


# ------------------------------------------------------------------------------------ 8. stale temp folders


def test_a_dead_prepares_temp_folder_is_removed_and_a_live_ones_kept(tiny_data):
    from tests.pretrain_utils import prepare_tiny

    dead = tiny_data / f"{fs.TEMP_PREFIX}abc-1-dead"
    dead.mkdir()
    (dead / ".owner").touch()
    (dead / "big").write_bytes(b"0" * 1000)
    live = tiny_data / f"{fs.TEMP_PREFIX}abc-2-live"
    live.mkdir()
    with fs.owner_lock(live):
        prepare_tiny(tiny_data)
        assert live.exists()
    assert not dead.exists()
    shutil.rmtree(live)


# ------------------------------------------------------------------------ damaged checkpoints said aloud


def test_the_only_checkpoint_with_a_wrong_size_refuses_and_loses_nothing(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain_here(tiny_data, run, "train.max_steps=2", "train.save_every=0")
    (only,) = ckpt.list_checkpoints(run)
    model = only / ckpt.MODEL
    model.write_bytes(model.read_bytes()[:-10])  # truncated
    lines_before = (run / "metrics.jsonl").read_text()
    export_before = (run / "export" / ckpt.MODEL).read_bytes()
    with pytest.raises(UserError) as err:
        pretrain_here(tiny_data, run, "train.max_steps=4", "train.save_every=0")
    assert "no usable checkpoint left (1 damaged)" in str(err.value) and "\n" not in str(err.value)
    warning = capsys.readouterr().err
    assert f"checkpoint {only.name}: {ckpt.MODEL} has" in warning and "set aside as" in warning
    (kept,) = (run / ckpt.CHECKPOINTS).glob(f"{only.name}.damaged-*")
    assert (kept / ckpt.MODEL).exists()  # nothing deleted
    assert (run / "metrics.jsonl").read_text() == lines_before  # not cut back to step 0
    assert (run / "export" / ckpt.MODEL).read_bytes() == export_before  # not overwritten


def test_a_missing_marker_is_named_and_the_previous_checkpoint_used(tiny_data, base_run, tmp_path, capsys):
    run = _copy(base_run, tmp_path)
    newest = ckpt.list_checkpoints(run)[-1]
    (newest / ckpt.MARKER).unlink()
    result = pretrain_here(tiny_data, run, *SAVE_EVERY_2, "train.max_steps=7")
    warning = capsys.readouterr().err
    assert f"checkpoint {newest.name}: {ckpt.MARKER} missing or unreadable; set aside as" in warning
    assert result["step"] == 7 and list((run / ckpt.CHECKPOINTS).glob(f"{newest.name}.damaged-*"))


def test_overwrite_in_a_requeued_command_resumes_instead_of_deleting_again(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    command = ("train.resume=false", "train.overwrite=true", "train.max_steps=4", "train.save_every=1")
    pretrain_here(tiny_data, run, "train.max_steps=2")  # an earlier run in the folder
    assert pretrain_here(tiny_data, run, *command, faults=("SIGTERM@3",))["stopped"]  # overwrote, preempted
    assert "removed the earlier run" in capsys.readouterr().out
    result = pretrain_here(tiny_data, run, *command)  # the scheduler runs the same command again
    out = capsys.readouterr().out
    assert "resuming it, not deleting it" in out and "resumed from" in out and "(step 3," in out
    assert result["step"] == 4
    # another command with overwrite=true still starts over
    pretrain_here(tiny_data, run, "train.resume=false", "train.overwrite=true", "train.max_steps=1")
    assert "removed the earlier run" in capsys.readouterr().out


def test_non_finite_hyperparameters_are_refused_at_load():
    from bert.config import PretrainConfig, load_config
    from bert.typed_yaml import ConfigError

    for value in (".inf", "-.inf", ".nan"):
        with pytest.raises(ConfigError, match=r"optimizer.lr: expected a finite number"):
            load_config(PretrainConfig, None, [f"optimizer.lr={value}"])


# ---------------------------------------------------------------------------- metrics that tell the truth


def test_the_evaluation_cut_by_a_stop_signal_is_done_after_the_resume(tiny_data, tmp_path):
    run = tmp_path / "run"
    common = ("train.max_steps=6", "train.eval_every=3", "train.save_every=0")
    assert pretrain_here(tiny_data, run, *common, faults=("SIGTERM@eval:3",))["stopped"]
    assert not any("eval/mlm_loss" in m for m in metrics(run))  # the partial evaluation was not logged
    pretrain_here(tiny_data, run, *common)
    evals = [m["step"] for m in metrics(run) if "eval/mlm_loss" in m]
    assert evals == [3, 6]


def test_running_a_finished_run_again_logs_nothing_twice(tiny_data, tmp_path):
    run = tmp_path / "run"
    pretrain_here(tiny_data, run, "train.max_steps=2", "train.save_every=0")
    before = (run / "metrics.jsonl").read_text()
    result = pretrain_here(tiny_data, run, "train.max_steps=2", "train.save_every=0")
    assert (run / "metrics.jsonl").read_text() == before and result["metrics"]["step"] == 2


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_word(tmp_path, capsys):
    lock = fs.RunLock(tmp_path).acquire()
    lock.release()
    fs.RunLock(tmp_path).acquire().release()
    assert "taking over" not in capsys.readouterr().err  # a clean release: nothing to say
    (tmp_path / fs.RunLock.NAME).write_text('{"pid": 123, "host": "node7", "since": "2026-12-06 01:00:00"}\n')
    fs.RunLock(tmp_path).acquire().release()  # the file of a run that was killed, its flock gone
    note = capsys.readouterr().err
    assert "taking over the lock of a run that ended without releasing it" in note and "node7" in note


def test_exported_and_checkpointed_files_follow_the_umask(tiny_data, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        pretrain_here(tiny_data, run, "train.max_steps=1")
    finally:
        os.umask(old)
    for path in (run / "export" / ckpt.MODEL, ckpt.step_folder(run, 1) / ckpt.MODEL):
        assert path.stat().st_mode & 0o777 == 0o644, (path, oct(path.stat().st_mode))
    assert (run / "export").stat().st_mode & 0o777 == 0o755


# ------------------------------------------------------------------------------- one line, not a traceback


def test_a_full_disk_is_one_line_and_the_last_checkpoint_stays(tiny_data, tmp_path, monkeypatch, capsys):
    import errno

    from tests.pretrain_utils import reset_accelerate, tiny_overrides

    run = tmp_path / "run"
    pretrain_here(tiny_data, run, "train.max_steps=2", "train.save_every=0")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "checkpoints" / "x"))

    monkeypatch.setattr(ckpt.Checkpointer, "save", full)
    reset_accelerate()
    try:
        code = main(["pretrain", *tiny_overrides(tiny_data, run, "train.max_steps=4", "train.save_every=0")])
    finally:
        reset_accelerate()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("bert pretrain: error: the disk is full writing")
    assert ckpt.latest_checkpoint(run).name == "step_0000002"


def test_fewer_training_pairs_than_one_batch_is_one_line(tiny_data, tmp_path):
    with pytest.raises(UserError, match="cannot fill one global batch.*smaller train.batch_size"):
        pretrain_here(tiny_data, tmp_path / "run", "train.batch_size=100000")


def test_a_pickled_or_unreadable_model_for_init_from_is_one_line(tiny_data, base_run, tmp_path):
    import os

    folder = tmp_path / "model"
    shutil.copytree(base_run / "export", folder)
    (folder / ckpt.MODEL).unlink()

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(UserError, match="not loadable as plain tensors.*nothing in it was run"):
        pretrain_here(tiny_data, tmp_path / "run", "train.max_steps=1", f"train.init_from={folder}")
    assert not (tmp_path / "ran").exists()
    (folder / "pytorch_model.bin").unlink()
    (folder / ckpt.MODEL).write_bytes(b"not safetensors at all")
    with pytest.raises(UserError, match="unreadable"):
        pretrain_here(tiny_data, tmp_path / "run2", "train.max_steps=1", f"train.init_from={folder}")
