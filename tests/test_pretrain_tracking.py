"""Dashboard settings (bert/tracking.py): wandb mode detection, one run id, no secrets in hyper-parameters."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_utils import prepare_tiny, pretrain_here  # noqa: E402

from bert.config import LoggingConfig, PretrainConfig
from bert.tracking import hparams, new_run_id, tracker_setup, wandb_mode


def test_wandb_offline_without_a_key_online_with_one(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    cfg = LoggingConfig(trackers=["wandb"])
    assert wandb_mode(cfg) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(cfg) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment always wins
    assert wandb_mode(cfg) == "disabled"
    trackers, kwargs = tracker_setup(cfg, "abc12345", "run", str(tmp_path))
    assert trackers == [] and kwargs == {}


def test_resumed_run_keeps_its_id(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_id = new_run_id()
    trackers, kwargs = tracker_setup(
        LoggingConfig(trackers=["tensorboard", "wandb"]), run_id, "demo", str(tmp_path)
    )
    assert trackers == ["tensorboard", "wandb"]
    assert kwargs["wandb"]["id"] == run_id and kwargs["wandb"]["resume"] == "allow"


def test_hparams_are_flat_scalars_without_secrets(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret-value-123")
    flat = hparams(PretrainConfig())
    assert flat["train.max_steps"] == 1000 and isinstance(flat["data.corpus"], str)
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())
    assert "secret-value-123" not in repr(flat)


def test_a_run_writes_tensorboard_events_and_an_offline_wandb_run(monkeypatch, tmp_path):
    """The dashboards for real: a 6-step tiny run with both trackers leaves the metrics in both."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cache, run = tmp_path / "prepared", tmp_path / "run"
    prepare_tiny(cache)
    pretrain_here(cache, run, "logging.trackers=[tensorboard,wandb]", "train.eval_every=3")

    events = sorted((run / "bert").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = EventAccumulator(str(events[0])).Reload().Tags()["scalars"]
    assert {"train/mlm_accuracy", "train/nsp_accuracy", "eval/mlm_accuracy", "eval/nsp_accuracy"} <= set(
        scalars
    )

    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    records = list(offline[0].glob("*.wandb"))
    assert len(records) == 1 and b"eval/nsp_accuracy" in records[0].read_bytes()
