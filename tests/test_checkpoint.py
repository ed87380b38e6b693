"""Checkpoint folders: completion marker, truncated files, keep-last pruning, compatibility (bert/checkpoint.py)."""

import json

import pytest

from bert import checkpoint as ckpt
from bert.errors import UserError


def _write(run, step, payload=b"weights" * 100):
    temp, final = ckpt.temp_folder(run, step), ckpt.step_folder(run, step)
    temp.mkdir(parents=True)
    (temp / "model.safetensors").write_bytes(payload)
    (temp / "random_states_0.pkl").write_bytes(b"rng")
    ckpt.finalize(temp, final, {"step": step})
    return final


def test_latest_complete_checkpoint_is_chosen(tmp_path):
    _write(tmp_path, 2)
    _write(tmp_path, 4)
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_folder(tmp_path, 4)
    assert ckpt.read_meta(ckpt.step_folder(tmp_path, 4))["step"] == 4
    assert not ckpt.temp_folder(tmp_path, 4).exists()


def test_folder_without_marker_is_ignored(tmp_path):
    _write(tmp_path, 2)
    newer = _write(tmp_path, 4)
    (newer / ckpt.MARKER).unlink()
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_folder(tmp_path, 2)


def test_truncated_file_is_ignored(tmp_path):
    _write(tmp_path, 2)
    newer = _write(tmp_path, 4)
    data = (newer / "model.safetensors").read_bytes()
    (newer / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_folder(tmp_path, 2)


def test_corrupt_marker_or_meta_is_ignored(tmp_path):
    _write(tmp_path, 2)
    newer = _write(tmp_path, 4)
    (newer / ckpt.MARKER).write_text("{not json")
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_folder(tmp_path, 2)


def test_temp_folder_is_never_chosen(tmp_path):
    _write(tmp_path, 2)
    temp = ckpt.temp_folder(tmp_path, 6)
    temp.mkdir()
    (temp / ckpt.META).write_text(json.dumps({"step": 6}))
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_folder(tmp_path, 2)


def test_prune_keeps_the_newest_complete_ones(tmp_path):
    for step in (2, 4, 6):
        _write(tmp_path, step)
    broken = _write(tmp_path, 8)
    (broken / ckpt.MARKER).unlink()  # incomplete: does not count, and is not a reason to delete a good one
    ckpt.temp_folder(tmp_path, 10).mkdir()
    deleted = ckpt.prune(tmp_path, keep_last=2)
    assert ckpt.list_checkpoints(tmp_path) == [ckpt.step_folder(tmp_path, 4), ckpt.step_folder(tmp_path, 6)]
    assert ckpt.step_folder(tmp_path, 2) in deleted
    assert not ckpt.temp_folder(tmp_path, 10).exists()


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
