"""bert/checkpoint.py and bert/fs.py on their own: states without pickle, the marker's sizes and hashes,
which folder is chosen, pruning, stale temp folders, the run lock, compatibility messages."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch

from bert import checkpoint as ckpt
from bert import fs
from bert.errors import UserError


def _write(run, step, payload=b"weights" * 100):
    """A minimal complete checkpoint folder (the files the marker covers; contents are not loaded here)."""
    folder = ckpt.step_folder(run, step)
    folder.mkdir(parents=True)
    (folder / ckpt.MODEL).write_bytes(payload)
    (folder / ckpt.rng_file(0)).write_bytes(b"rng")
    meta = {"step": step, "data": {}, "counters": {}, "run_id": "x", "config": {}}
    (folder / ckpt.META).write_text(json.dumps(meta))
    ckpt.write_marker(folder)
    return folder


def test_latest_complete_checkpoint_is_chosen(tmp_path):
    _write(tmp_path, 2)
    _write(tmp_path, 4)
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_folder(tmp_path, 4)
    assert ckpt.read_meta(ckpt.step_folder(tmp_path, 4))["step"] == 4


def test_folder_without_marker_is_ignored(tmp_path):
    _write(tmp_path, 2)
    newer = _write(tmp_path, 4)
    (newer / ckpt.MARKER).unlink()
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_folder(tmp_path, 2)


def test_truncated_file_is_ignored(tmp_path):
    _write(tmp_path, 2)
    newer = _write(tmp_path, 4)
    data = (newer / ckpt.MODEL).read_bytes()
    (newer / ckpt.MODEL).write_bytes(data[: len(data) // 2])
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_folder(tmp_path, 2)


def test_corrupt_marker_is_ignored(tmp_path):
    _write(tmp_path, 2)
    newer = _write(tmp_path, 4)
    (newer / ckpt.MARKER).write_text("{not json")
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_folder(tmp_path, 2)


def test_temp_folder_is_never_chosen(tmp_path):
    _write(tmp_path, 2)
    temp = tmp_path / ckpt.CHECKPOINTS / f"{fs.TEMP_PREFIX}step_0000006-123-abc"
    temp.mkdir()
    (temp / ckpt.META).write_text(json.dumps({"step": 6}))
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_folder(tmp_path, 2)


def test_verify_finds_a_same_size_flip_and_names_the_file(tmp_path):
    folder = _write(tmp_path, 2)
    assert ckpt.verify(folder) is None
    data = bytearray((folder / ckpt.MODEL).read_bytes())
    data[10] ^= 0xFF  # one byte, same size: the cheap check still passes
    (folder / ckpt.MODEL).write_bytes(bytes(data))
    assert ckpt.is_complete(folder)
    assert ckpt.verify(folder) == f"{ckpt.MODEL}: content differs from its hash (damaged)"


def test_verify_requires_what_a_resume_reads_from_meta(tmp_path):
    folder = _write(tmp_path, 2)
    meta = ckpt.read_meta(folder)
    del meta["data"]
    (folder / ckpt.META).write_text(json.dumps(meta))
    ckpt.write_marker(folder)  # hashes match: only the content is short
    assert ckpt.verify(folder) == f"{ckpt.META}: no data"


def test_prune_keeps_the_newest_and_never_the_one_just_saved(tmp_path):
    for step in (2, 4, 6, 8):
        _write(tmp_path, step)

    class Main:
        is_main_process = True

    checkpointer = ckpt.Checkpointer(tmp_path, Main(), "token", keep_last=2)
    deleted = checkpointer.prune(keep=ckpt.step_folder(tmp_path, 8))
    assert ckpt.list_checkpoints(tmp_path) == [ckpt.step_folder(tmp_path, 6), ckpt.step_folder(tmp_path, 8)]
    assert set(deleted) == {ckpt.step_folder(tmp_path, 2), ckpt.step_folder(tmp_path, 4)}
    # Pruning by step number must not delete the checkpoint just written, even when it ranks lowest.
    _write(tmp_path, 1)
    checkpointer.prune(keep=ckpt.step_folder(tmp_path, 1))
    assert ckpt.step_folder(tmp_path, 1) in ckpt.list_checkpoints(tmp_path)
    assert not list((tmp_path / ckpt.CHECKPOINTS).glob(f"{fs.TEMP_PREFIX}*"))  # deleted by rename, then gone


def test_clean_removes_dead_writers_folders_and_sets_damaged_step_folders_aside(tmp_path):
    good = _write(tmp_path, 2)
    # A step folder is renamed into place after its marker, and deleted by renaming it first: one without
    # a valid marker is damage (it may hold a user's only weights), set aside, never deleted.
    partial = ckpt.step_folder(tmp_path, 4)
    partial.mkdir()
    (partial / ckpt.MODEL).write_bytes(b"half")
    root = tmp_path / ckpt.CHECKPOINTS
    dead = root / f"{fs.TEMP_PREFIX}step_0000006-1-dead"
    dead.mkdir()
    (dead / ".owner").touch()  # its writer is gone: nobody holds the lock
    live = root / f"{fs.TEMP_PREFIX}step_0000006-2-live"
    live.mkdir()

    class Main:
        is_main_process = True

    warnings = []
    with fs.owner_lock(live):  # a live writer
        set_aside = ckpt.Checkpointer(tmp_path, Main(), "t").clean(warnings.append)
        assert live.exists()
    assert [p.name.split(".damaged-")[0] for p in set_aside] == ["step_0000004"]
    assert (set_aside[0] / ckpt.MODEL).read_bytes() == b"half"  # kept
    assert good.exists() and not partial.exists() and not dead.exists()
    assert warnings == [
        f"checkpoint step_0000004: {ckpt.MARKER} missing or unreadable; set aside as {set_aside[0].name} (not deleted)"
    ]


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), fused=True)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    ckpt.save_state_tree(optimizer.state_dict(), tmp_path / "o.safetensors", tmp_path / "o.json")
    assert b"\x80" not in (tmp_path / "o.json").read_bytes()[:2]  # JSON, not a pickle stream
    restored = torch.optim.AdamW(model.parameters(), lr=5.0, fused=True)
    restored.load_state_dict(ckpt.load_state_tree(tmp_path / "o.safetensors", tmp_path / "o.json"))
    a, b = optimizer.state_dict(), restored.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["param_groups"][0]["betas"] == (0.9, 0.98)
    for key in a["state"]:
        for name, value in a["state"][key].items():
            assert torch.equal(value, b["state"][key][name]), name


def test_rng_states_round_trip_and_a_damaged_file_is_an_error(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    ckpt.save_rng(tmp_path / "rng.safetensors")
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.load_rng(tmp_path / "rng.safetensors")
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ckpt.CheckpointError, match="bad.safetensors: the RNG states cannot be restored"):
        ckpt.load_rng(tmp_path / "bad.safetensors")


class _Payload:
    """Unpickling this writes a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_no_state_reader_unpickles(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps(_Payload(marker))
    pickle.loads(payload)  # negative control: the payload does run when unpickled
    assert marker.exists()
    marker.unlink()
    for name in ("o.json", "o.safetensors", "rng.safetensors"):
        (tmp_path / name).write_bytes(payload)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_state_tree(tmp_path / "o.safetensors", tmp_path / "o.json")
    (tmp_path / "o.json").write_text("{}")
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_state_tree(tmp_path / "o.safetensors", tmp_path / "o.json")
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_rng(tmp_path / "rng.safetensors")
    assert not marker.exists()


def test_run_lock_refuses_a_second_holder_with_one_line(tmp_path):
    with fs.RunLock(tmp_path):
        with pytest.raises(UserError) as err:
            fs.RunLock(tmp_path).acquire()
        message = str(err.value)
        assert "in use by another run" in message and '"pid"' in message and "\n" not in message
    fs.RunLock(tmp_path).acquire().release()  # released on exit: free again


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    final = tmp_path / "out"
    with fs.atomic_folder(final) as temp:
        (temp / "a").write_text("1")
    assert (final / "a").read_text() == "1" and not (final / ".owner").exists()
    with pytest.raises(RuntimeError), fs.atomic_folder(final) as temp:
        (temp / "a").write_text("2")
        raise RuntimeError("crash half-way")
    assert (final / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp left behind


def test_incompatible_config_names_the_differing_keys(tmp_path):
    saved = {"model.hidden_size": 32, "model.vocab_size": 1000, "tokenizer": "abc", "train.batch_size": 8}
    current = {"model.hidden_size": 64, "model.vocab_size": 1200, "tokenizer": "abc", "train.batch_size": 8}
    with pytest.raises(UserError) as err:
        ckpt.check_compatible(tmp_path, saved, current)
    message = str(err.value)
    assert "\n" not in message
    assert "model.hidden_size: 32 -> 64" in message and "model.vocab_size: 1000 -> 1200" in message
    assert "tokenizer" not in message.split("differs in")[1].split("(")[0]
    ckpt.check_compatible(tmp_path, saved, dict(saved))  # identical: no error


def test_what_a_path_given_as_a_model_means(tmp_path):
    from bert.checkpoint import checkpoint_of, is_training_checkpoint
    from bert.export import model_folder, resolve_model_path

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "config.json").write_text("{}")
    step = tmp_path / "other" / ckpt.CHECKPOINTS / "step_00000004"
    step.mkdir(parents=True)
    (step / ckpt.MARKER).write_text("{}")
    assert model_folder(hf) == hf and model_folder(run) == run / "export" and model_folder(step) is None
    assert resolve_model_path(run, tmp_path / "out", write=False) == run / "export"
    assert is_training_checkpoint(step) and is_training_checkpoint(tmp_path / "other")
    assert not is_training_checkpoint(hf)
    assert resolve_model_path(step, tmp_path / "out", write=False) == tmp_path / "out" / "init_model"
    assert checkpoint_of(step) == step
    empty = tmp_path / "empty"
    (empty / ckpt.CHECKPOINTS).mkdir(parents=True)
    with pytest.raises(UserError, match="run folder has no complete checkpoint"):
        checkpoint_of(empty)
    with pytest.raises(UserError, match="not a model folder .no config.json. nor a training checkpoint"):
        resolve_model_path(tmp_path / "nothing", tmp_path / "out", write=False)
