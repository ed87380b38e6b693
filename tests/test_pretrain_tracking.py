"""Dashboard settings (bert/tracking.py): wandb mode detection, one run id, no secrets in hyper-parameters."""

import pytest

from bert import tracking
from bert.config import LoggingConfig, PretrainConfig
from bert.tracking import MetricsFile, nested_config, new_run_id, tracker_setup, typed_hparams, wandb_mode
from tests.pretrain_utils import prepare_tiny, pretrain_here


def test_wandb_offline_without_a_key_online_with_one(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setattr(tracking, "wandb_reachable", lambda timeout=3.0: True)
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


def test_hparams_are_flat_typed_scalars_and_every_set_config_key_reaches_the_dashboard():
    flat = typed_hparams(PretrainConfig())
    assert flat["train.max_steps"] == 1000 and flat["data.corpus"] == "[]"
    assert flat["train.compile"] is False and flat["logging.trackers"] == '["tensorboard"]'
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())
    # Names that merely contain "token" or "key" are not secrets.
    assert "model.pad_token_id" in flat and "data.tokenizer" in typed_hparams(
        {"data": {"tokenizer": "v.txt"}}
    )
    every = tracking.flatten(tracking.to_dict(PretrainConfig()))
    assert set(flat) == {k for k, v in every.items() if v is not None}  # only nulls left out
    nested = nested_config(PretrainConfig())
    assert nested["train"]["max_time"] is None and nested["data"]["corpus"] == []


def test_secret_named_keys_never_reach_the_dashboard():
    config = {
        "logging": {"api_key": "s3cret-1", "wandb_api_key": "s3cret-2", "password": "s3cret-3"},
        "remote": {"token": "s3cret-4", "client_secret": "s3cret-5"},
        "model": {"pad_token_id": 0, "keyframe": 3},
    }
    flat = typed_hparams(config)
    assert "s3cret" not in repr(flat) and "s3cret" not in repr(nested_config(config))
    assert flat == {"model.pad_token_id": 0, "model.keyframe": 3}


def _assert_offline_within_seconds(monkeypatch, capsys, port: int) -> None:
    """wandb_mode with a key and the server at 127.0.0.1:`port`: offline in under 5 s, one warning."""
    import time

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    assert wandb_mode(LoggingConfig(trackers=["wandb"], wandb_mode="online")) == "offline"
    assert time.monotonic() - started < 5
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "cannot be reached" in warning


def test_an_unreachable_wandb_server_falls_back_to_offline_quickly(monkeypatch, capsys):
    import socket

    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _assert_offline_within_seconds(monkeypatch, capsys, port)


def test_metrics_file_is_cut_back_to_what_a_checkpoint_saw(tmp_path):
    log = MetricsFile(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3, 4):
        log.append({"step": step})
    seen = 2  # a checkpoint of step 2 was saved after two lines
    again = MetricsFile(tmp_path / "metrics.jsonl")
    assert again.lines == 4
    again.truncate(seen)
    again.append({"step": 3})
    assert [e["step"] for e in again.entries()] == [1, 2, 3]


@pytest.mark.e2e
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


def _hparams_plugin(run_folder):
    """(metric tags of the experiment, {hparam: typed value}) from a TensorBoard run folder's own events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run_folder)).Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = {}
    for name, value in session.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind)
    return [m.name.tag for m in experiment.metric_infos], values, events


@pytest.mark.e2e
def test_one_tensorboard_run_across_a_resume_with_typed_hyperparameters_linked_to_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    cache, run = tmp_path / "prepared", tmp_path / "run"
    prepare_tiny(cache)
    pretrain_here(cache, run, "logging.trackers=[tensorboard]", "train.max_steps=3", "train.eval_every=3")
    pretrain_here(cache, run, "logging.trackers=[tensorboard]", "train.max_steps=6", "train.eval_every=3")
    folder = run / "bert"
    assert [p for p in folder.iterdir() if p.is_dir()] == []  # no timestamped sub-runs
    metrics, values, events = _hparams_plugin(folder)
    assert "eval/mlm_loss" in metrics and "eval/mlm_loss" in events.Tags()["scalars"]  # linked to a curve
    # the run's hyper-parameters as it started (TensorBoard keeps the first; config.yaml has the current)
    assert values["train.compile"] is False and values["train.max_steps"] == 3.0
    assert values["data.corpus"] == '["synthetic"]' and "train.max_time" not in values  # None left out
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == [1, 2, 3, 4, 5, 6]  # one run, every step once


@pytest.mark.e2e
def test_the_wandb_run_has_the_nested_typed_config_group_tags_notes_and_job_type(monkeypatch, tmp_path):
    from tests.wandb_records import run_info

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cache, run = tmp_path / "prepared", tmp_path / "run"
    prepare_tiny(cache)
    pretrain_here(
        cache, run, "logging.trackers=[wandb]", "train.max_steps=2", "logging.group=ablation",
        "logging.tags=[tiny,cpu]", "logging.notes=a first look", "logging.run_name=tiny-1",
    )  # fmt: skip
    (folder,) = (run / "wandb").glob("offline-run-*")
    info = run_info(folder)
    assert (info["name"], info["group"], info["job_type"]) == ("tiny-1", "ablation", "pretrain")
    assert info["tags"] == ["tiny", "cpu"] and info["notes"] == "a first look"
    config = info["config"]
    assert config["train"]["max_steps"] == 2 and config["train"]["compile"] is False
    assert config["data"]["corpus"] == ["synthetic"] and config["train"]["max_time"] is None


def test_a_wandb_server_that_accepts_and_never_answers_falls_back_to_offline(monkeypatch, capsys):
    """A listening socket that never replies (a hung server or proxy): offline within seconds, one warning."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)  # connections complete in the kernel's backlog; nothing ever answers
        _assert_offline_within_seconds(monkeypatch, capsys, server.getsockname()[1])
