"""Dashboards: which Accelerate trackers to start, with what settings, and how a run keeps its identity.

This file owns the decisions around `accelerator.init_trackers`:
- wandb mode: `online` when logged in (an API key in WANDB_API_KEY or ~/.netrc; only its presence is
  checked, the key is never read into our objects, printed or saved), `offline` otherwise; an explicit
  WANDB_MODE environment variable always wins;
- one dashboard run per job: the run id is created once, stored in every checkpoint's meta.json, and passed
  back on resume (`{"wandb": {"id": ..., "resume": "allow"}}`) so the curves continue with increasing steps;
- hyper-parameters flattened to scalars (TensorBoard's hparams accepts only those).
Trackers are a no-op when `logging.trackers` is empty.
"""

from __future__ import annotations

import netrc
import os
import uuid
from typing import Any

from bert.config import LoggingConfig, flatten, to_dict

SECRET_WORDS = ("key", "token", "secret", "password")
"""Config keys containing these words are never sent to a tracker (there are none today; a guard)."""


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


def wandb_mode(cfg: LoggingConfig) -> str:
    """The wandb mode to use: WANDB_MODE if set, else the config, with 'auto' decided by the login."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if cfg.wandb_mode != "auto":
        return cfg.wandb_mode
    return "online" if wandb_logged_in() else "offline"


def tracker_setup(cfg: LoggingConfig, run_id: str, run_name: str, run_dir: str) -> tuple[list[str], dict]:
    """(log_with, init_kwargs) for `Accelerator(log_with=...)` and `accelerator.init_trackers`."""
    trackers = [t for t in cfg.trackers if t]
    init_kwargs: dict[str, Any] = {}
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
            }
    return trackers, init_kwargs


def hparams(config: Any) -> dict[str, Any]:
    """The resolved config as flat scalars (lists and None become strings), secrets left out."""
    flat = flatten(to_dict(config))
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if any(word in key.lower() for word in SECRET_WORDS):
            continue
        out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
