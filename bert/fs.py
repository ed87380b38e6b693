"""File-system safety: atomic writes, temp folders that say whether their writer is alive, and run locks.

Everything the project writes that another run or a crash could see half-written goes through here:

- `atomic_write_text` / `atomic_write_bytes`: a file is replaced whole or not at all (temp file + fsync +
  rename in the same folder).
- `atomic_folder(final)`: a folder (a checkpoint, a prepared dataset, an exported model) is built in a
  sibling temp folder with a unique name and renamed into place when complete. While it is being written,
  its writer holds an OS lock on `<temp>/.owner`, so `remove_stale_temps` can tell a dead writer's leftovers
  (safe to delete) from a live writer's folder (never touched), on this host.
- `RunLock(folder)`: one run per output folder. An OS-level lock (`flock`) on `<folder>/.lock`, released
  by the kernel on ANY exit, SIGKILL included; a second run refuses with one line naming the holder.

Locks are advisory and work on local file systems; on network file systems (NFS) `flock` may not be
enforced across hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bert.errors import UserError

TEMP_PREFIX = ".tmp-"
"""Names of folders being written; never read as results."""
_OWNER = ".owner"


def unique_token() -> str:
    """A short token that no other process or run will produce."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file inside `folder` durable (best effort: not every FS supports it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` in one step: readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{TEMP_PREFIX}{path.name}.{unique_token()}")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_folder(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_of(folder: Path, marker: str) -> dict[str, dict[str, Any]]:
    """{relative path: {size, sha256}} of every file below `folder` but the marker itself and hidden files
    (a writer's `.owner`): what a checkpoint's and a prepared folder's COMPLETE marker records."""
    return {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != marker and not p.name.startswith(".")
    }


def umask() -> int:
    """This process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_modes(folder: Path) -> None:
    """Give every file and folder below `folder` the permissions a plain `open()` would under the user's
    umask: safetensors writes 0600 whatever the umask, so colleagues on a shared cluster could not read a
    model or checkpoint."""
    mask = umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_folder(final: str | Path, token: str | None = None) -> Iterator[Path]:
    """Yield a fresh temp folder beside `final`; on success it replaces `final` (fsynced), on error it goes.

    `token` names the temp folder (several processes writing into one folder pass the same token)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.parent / f"{TEMP_PREFIX}{final.name}-{token or unique_token()}"
    temp.mkdir(exist_ok=token is not None)
    with owner_lock(temp):
        try:
            yield temp
            (temp / _OWNER).unlink(missing_ok=True)
            default_modes(temp)
            fsync_tree(temp)
            replace_folder(temp, final)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise


def replace_folder(source: Path, final: Path) -> None:
    """Rename `source` to `final`; an existing `final` is moved aside first and removed after."""
    if final.exists():
        trash = final.parent / f"{TEMP_PREFIX}old-{final.name}-{unique_token()}"
        os.replace(final, trash)
        os.replace(source, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(source, final)
    fsync_folder(final.parent)


def remove_folder(folder: Path) -> None:
    """Delete a folder so that a crash half-way never leaves it looking like a result: rename, then delete."""
    if not folder.exists():
        return
    trash = folder.parent / f"{TEMP_PREFIX}old-{folder.name}-{unique_token()}"
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def owner_lock(temp: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<temp>/.owner` while the block runs (see remove_stale_temps)."""
    handle = open(temp / _OWNER, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # releases the lock


def remove_stale_temps(parent: str | Path) -> list[Path]:
    """Delete the temp folders (and temp files) in `parent` whose writer is gone; returns what was removed.

    A temp folder whose `.owner` can be locked has no live writer (the kernel released the writer's lock
    when it died); one whose lock is held is left alone. A temp folder without `.owner` is a finished
    folder's leftover from a rename that crashed (`replace_folder`), or a temp file: also removed."""
    parent = Path(parent)
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for child in parent.iterdir():
        if not child.name.startswith(TEMP_PREFIX):
            continue
        if child.is_dir() and (child / _OWNER).exists():
            try:
                handle = open(child / _OWNER, "a+")
            except OSError:
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue  # a live writer holds it
            try:
                shutil.rmtree(child, ignore_errors=True)
            finally:
                handle.close()
        elif child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        elif _is_old(child):
            child.unlink(missing_ok=True)
        else:
            continue
        removed.append(child)
    return removed


def _is_old(path: Path, seconds: float = 3600.0) -> bool:
    """A temp FILE carries no lock; one untouched for an hour has no live writer."""
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


class RunLock:
    """An exclusive lock on an output folder for the lifetime of a run (module docstring)."""

    NAME = ".lock"

    def __init__(self, folder: str | Path, what: str = "run") -> None:
        self.folder = Path(folder)
        self.what = what
        self.handle = None

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.NAME
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(
                f"{self.folder} is in use by another {self.what} ({holder}); wait for it to finish, stop it, "
                f"or choose another train.output_dir"
            ) from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous:  # a release clears the file: its holder ended without releasing it (killed, a crash)
            print(
                f"note: {self.folder}: taking over the lock of a {self.what} that ended without releasing it "
                f"({previous})",
                file=sys.stderr,
                flush=True,
            )
        handle.seek(0)
        handle.truncate()
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        handle.write(json.dumps(info) + "\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.handle.seek(0)
            self.handle.truncate()  # empty: a clean release (a later holder says nothing)
            self.handle.flush()
            self.handle.close()
            self.handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
