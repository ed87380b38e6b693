"""Read an offline wandb run's records (`run-<id>.wandb`) without a server: the file is a LevelDB-style log
(a 7-byte header, then 32 KiB blocks of chunks with 7-byte chunk headers) of `wandb_internal_pb2.Record`
protobufs. The tests read the run's name, group, job type, tags, notes and typed config from it."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32768
FILE_HEADER = 7  # b":W&B", a 2-byte magic, a version byte
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    """Every record of the run file, decoded."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb run file"
    out, pending, offset = [], b"", FILE_HEADER
    while offset + 7 <= len(data):
        room = BLOCK - offset % BLOCK
        if room < 7:  # a block's tail too short for a chunk header is padding
            offset += room
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        if offset + 7 + length > len(data):  # a chunk still being written
            break
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def run_info(run_folder: Path, wait: float = 20.0) -> dict[str, Any]:
    """The run record of an offline run folder: name, group, job type, tags, notes and the config (nested
    values as wandb stores them: JSON, so their types survive). wandb's core process writes the file on its
    own schedule, so a busy machine may need a moment: the file is read again for up to `wait` seconds."""
    import time

    deadline = time.monotonic() + wait
    while True:
        info = _run_record(run_folder)
        if info is not None or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if info is None:
        raise AssertionError(f"{run_folder}: no run record")
    return info


def _run_record(run_folder: Path) -> dict[str, Any] | None:
    (path,) = sorted(Path(run_folder).glob("*.wandb"))
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            run = record.run
            config = {item.key: json.loads(item.value_json) for item in run.config.update}
            return {
                "name": run.display_name,
                "group": run.run_group,
                "job_type": run.job_type,
                "tags": list(run.tags),
                "notes": run.notes,
                "config": {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()},
            }
    return None
