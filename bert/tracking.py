"""Dashboards: which Accelerate trackers to start, with what settings, and how a run keeps its identity.

This file owns the decisions around `accelerator.init_trackers`:
- wandb mode: `online` when logged in (an API key in WANDB_API_KEY or ~/.netrc; only its presence is
  checked, the key is never read into our objects, printed or saved), `offline` otherwise; an explicit
  WANDB_MODE environment variable always wins;
- a wandb server that cannot be reached (no network on a cluster node, a firewall) or that accepts the
  connection and never answers is found out by a 3-second HTTP request before wandb starts; the run then
  logs offline, with one warning, instead of waiting minutes for wandb's own time-out;
- one dashboard run per job: the run id is created once, stored in every checkpoint's meta.json, and passed
  back on resume (`{"wandb": {"id": ..., "resume": "allow"}}`) so the curves continue with increasing steps;
  TensorBoard is told to hide the events of steps after the resumed one (`purge_step`), which a crashed
  run had logged and the resumed run logs again;
- the config, secrets left out: nested with its real types for wandb (`nested_config`); flat and typed for
  TensorBoard's HParams view (`typed_hparams`: booleans stay booleans, lists as text, nulls left out), written
  into the run's OWN event file with the names of the metrics to compare (`start_trackers`), so the view
  links each run's hyper-parameters to its curves, and one TensorBoard run stays one run across resumes;
- wandb's group, tags, notes and job type (pretrain, finetune, glue), and the final metrics in the run
  summary (`finish_trackers`);
- `MetricsFile`: metrics.jsonl, the plain-text copy of the dashboard, one line per logged step, cut back on
  resume to the lines the checkpoint had seen, so that every step appears once.
Trackers are a no-op when `logging.trackers` is empty.
"""

from __future__ import annotations

import json
import netrc
import os
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bert import fs
from bert.config import LoggingConfig, flatten, to_dict

SECRET_NAMES = ("key", "api_key", "token", "access_token", "auth_token", "secret", "password")
"""Config keys whose last name is one of these, or ends in _api_key, _secret or _password, are never sent
to a tracker (there are none today; a guard). Whole names: model.pad_token_id and data.tokenizer are sent."""


def new_run_id() -> str:
    """A fresh dashboard run id (8 lowercase hex characters, valid for wandb)."""
    return uuid.uuid4().hex[:8]


def wandb_logged_in() -> bool:
    """True if a wandb API key is available (environment or ~/.netrc); the key itself is not kept."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        entry = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_reachable(timeout: float = 3.0) -> bool:
    """Whether the wandb server (WANDB_BASE_URL, else api.wandb.ai) answers an HTTP request within `timeout`
    seconds: a connection that opens is not enough (a proxy or a hung server accepts and never answers,
    and wandb.init then waits minutes before failing with a traceback). Any HTTP status counts as an answer."""
    import http.client

    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host = url.hostname or "api.wandb.ai"
    kind = http.client.HTTPConnection if url.scheme == "http" else http.client.HTTPSConnection
    connection = kind(host, url.port, timeout=timeout)
    try:
        connection.request("HEAD", "/")
        connection.getresponse()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def wandb_mode(cfg: LoggingConfig) -> str:
    """The wandb mode to use: WANDB_MODE if set, else the config, with 'auto' decided by the login; an
    online mode whose server does not answer becomes offline, with one warning."""
    mode = os.environ.get("WANDB_MODE") or cfg.wandb_mode
    if mode == "auto":
        mode = "online" if wandb_logged_in() else "offline"
    if mode in ("online", "run") and not wandb_reachable():
        server = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
        print(
            f"warning: wandb server {server} cannot be reached; logging offline "
            "(upload later with: wandb sync <run folder>/wandb/offline-run-*)",
            file=sys.stderr,
            flush=True,
        )
        mode = "offline"
    return mode


def tracker_setup(
    cfg: LoggingConfig,
    run_id: str,
    run_name: str,
    run_dir: str,
    resumed_step: int = 0,
    job_type: str | None = None,
    config: Any = None,
    group: str | None = None,
) -> tuple[list[str], dict]:
    """(log_with, init_kwargs) for `Accelerator(log_with=...)` and `start_trackers`; `config` goes to wandb
    nested and typed, `group` is the default when logging.group is unset."""
    trackers = [t for t in cfg.trackers if t]
    init_kwargs: dict[str, Any] = {}
    if "tensorboard" in trackers and resumed_step:
        init_kwargs["tensorboard"] = {"purge_step": resumed_step + 1}
    if "wandb" in trackers:
        mode = wandb_mode(cfg)
        if mode == "disabled":
            trackers.remove("wandb")
        else:
            os.environ["WANDB_MODE"] = mode  # read by wandb.init in this process
            init_kwargs["wandb"] = {
                "id": run_id,
                "resume": "allow",
                "name": run_name,
                "dir": run_dir,
                "mode": mode,
                "group": cfg.group or group,
                "tags": list(cfg.tags) or None,
                "notes": cfg.notes,
                "job_type": job_type,
                "config": nested_config(config) if config is not None else None,
            }
    return trackers, init_kwargs


def start_trackers(
    accelerator: Any, project: str, config: Any, init_kwargs: dict, metrics: list[str], step: int = 0
) -> None:
    """Start the trackers; TensorBoard gets the typed hyper-parameters in the run's own event file, linked to
    `metrics` (the tags its HParams view compares runs by), when the run starts (`step` 0): TensorBoard keeps
    the first hyper-parameters a run wrote, so a resumed launch writes none (settings changed on resume are
    named in its log, and config.yaml holds them). Accelerate is given no config: it would flatten it to
    strings for wandb and write TensorBoard's hyper-parameters into a new timestamped sub-run."""
    accelerator.init_trackers(project, init_kwargs=init_kwargs)
    if not accelerator.is_main_process or step:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            writer = tracker.writer
            values = typed_hparams(config)
            for summary in hparams_summary(values, dict.fromkeys(metrics, 0.0)):
                writer.file_writer.add_summary(_booleans_as_booleans(summary, values))
            writer.flush()


def _booleans_as_booleans(summary: Any, values: dict[str, Any]) -> Any:
    """torch's `hparams` summary stores booleans as numbers (bool is an int to Python): restore their type
    in the session's values and the experiment's declared types."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    booleans = {k: v for k, v in values.items() if isinstance(v, bool)}
    item = summary.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(item.metadata.plugin_data.content)
    kind = data.WhichOneof("data")
    if kind == "session_start_info":
        for name, value in booleans.items():
            data.session_start_info.hparams[name].bool_value = value
    elif kind == "experiment":
        for info in data.experiment.hparam_infos:
            if info.name in booleans:
                info.type = api_pb2.DATA_TYPE_BOOL
    item.metadata.plugin_data.content = data.SerializeToString()
    return summary


def finish_trackers(accelerator: Any, summary: dict[str, Any] | None = None) -> None:
    """Put the final metrics in the wandb run's summary, then close every tracker (they can be started again:
    fine-tuning starts one run per seed). Unlike `accelerator.end_training`, the process group stays."""
    for tracker in accelerator.trackers:
        if tracker.name == "wandb" and summary and accelerator.is_main_process:
            tracker.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        tracker.finish()
    accelerator.trackers = []


def nested_config(config: Any) -> dict[str, Any]:
    """The config as nested dicts with its real types (lists, None, booleans), secrets left out."""

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}" if path else k) for k, v in value.items() if not is_secret(k)}
        return value

    return clean(to_dict(config) if not isinstance(config, dict) else config, "")


def typed_hparams(config: Any) -> dict[str, bool | int | float | str]:
    """Flat hyper-parameters for TensorBoard's HParams view: booleans, numbers and strings keep their type,
    lists become JSON text, None is left out (the view has no null); secrets left out."""
    flat = flatten(to_dict(config) if not isinstance(config, dict) else config)
    out: dict[str, bool | int | float | str] = {}
    for key, value in flat.items():
        if is_secret(key) or value is None:
            continue
        out[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return out


def is_secret(key: str) -> bool:
    """Whether a dotted config key names a secret (whole names: see SECRET_NAMES)."""
    name = key.rsplit(".", 1)[-1].lower()
    return name in SECRET_NAMES or name.endswith(("_api_key", "_secret", "_password"))


class MetricsFile:
    """metrics.jsonl of a run: one JSON object per logged step (main process only writes)."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.lines = self._count() if enabled else 0

    def _count(self) -> int:
        if not self.path.is_file():
            return 0
        return sum(1 for line in self.path.read_text().splitlines() if line.strip())

    def truncate(self, lines: int) -> None:
        """Keep the first `lines` entries (what a checkpoint had seen); later ones are logged again."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip()][:lines]
        fs.atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self.lines = len(kept)

    def append(self, entry: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        self.lines += 1

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
