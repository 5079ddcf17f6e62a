"""Writing a session: the locked append-only event log, tensors before their events, the manifest."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechscope.sessions.errors import SessionError
from mechscope.sessions.folders import (
    FILE_MODE,
    atomic_write,
    clear_lock_info,
    fsync_dir,
    lock_holder,
    make_dir,
    write_lock_info,
)
from mechscope.sessions.log import Log, read_log, stamp
from mechscope.sessions.paths import EVENTS_FILE, MANIFEST_FILE

if TYPE_CHECKING:
    import numpy as np


class LogWriter:
    """The write side of one session's events.jsonl: an exclusive lock (POSIX) held from the first
    write until `close`, and the size of the log's complete events so a failed or interrupted write
    is cut back rather than left for readers.

    `stamp` is (size, mtime_ns, inode) of the log as last read or written: a different one on disk
    means another process (or a crash) changed it, and the log is read again before writing.
    """

    def __init__(self, folder: Path, log: Log) -> None:
        self.fd: int | None = None
        self.folder = folder
        self.valid_size = log.valid_size  # bytes of events.jsonl holding complete events
        self.needs_newline = log.needs_newline
        self.stamp = log.stamp

    @property
    def events_path(self) -> Path:
        return self.folder / EVENTS_FILE

    @property
    def is_open(self) -> bool:
        return self.fd is not None

    def open(self, adopt: Callable[[Log], None]) -> None:
        """Open and lock the log; re-read it if it changed since it was read; cut an interrupted last line.

        A log read again is handed to `adopt` (the session takes its events) before anything is
        written, so what is appended next follows what is on disk. `adopt` is not kept: a writer
        holding its session would make a cycle, and a dropped session would keep the lock until
        the garbage collector ran.
        """
        if self.fd is not None:
            return
        try:
            fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise SessionError(f"{self.events_path}: cannot open for writing ({exc.strerror}); "
                               "recording stopped") from None
        try:
            self._lock(fd)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SessionError(f"{self.events_path}: not a regular file")
            if stamp(info) != self.stamp:
                # Another process wrote (or a crash left a partial line) since this log was read.
                log = read_log(self.folder)
                if log.stamp[2] != info.st_ino:
                    raise SessionError(f"{self.events_path}: replaced while opening it; reopen the session")
                self.valid_size, self.needs_newline, self.stamp = log.valid_size, log.needs_newline, log.stamp
                adopt(log)
            if info.st_size != self.valid_size:
                os.ftruncate(fd, self.valid_size)
            if self.needs_newline:
                _write_all(fd, b"\n")
                os.fsync(fd)
                self.valid_size += 1
                self.needs_newline = False
        except OSError as exc:
            os.close(fd)
            raise SessionError(f"{self.events_path}: cannot write ({exc.strerror}); "
                               "recording stopped") from None
        except BaseException:
            os.close(fd)
            raise
        write_lock_info(self.folder)
        self.fd = fd

    def _lock(self, fd: int) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; a single writer is the user's job
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SessionError(f"session {self.folder.name!r} is being recorded by "
                               f"{lock_holder(self.folder)}") from None

    def append(self, data: bytes) -> None:
        """Write one line and fsync it; on any failure cut the log back to its last good size.

        The log must be open: the caller numbers the line from the events `open` left it with.
        """
        fd = self.fd
        assert fd is not None, "open() the log before appending to it"
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            lost = f"{self.events_path}: cannot write ({exc.strerror}); the event was not saved"
            try:
                os.ftruncate(fd, self.valid_size)
                os.fsync(fd)
            except OSError:
                # The log may end in a partial line: stop writing through this handle; the next
                # append reopens, re-reads and cuts the partial line before writing.
                self.close()
                self.stamp = (-1, -1, -1)
            raise SessionError(lost) from None
        self.valid_size += len(data)
        self.stamp = stamp(os.fstat(fd))

    def save_tensor(self, file: str, key: str, array: np.ndarray) -> None:
        """Write `array` under `key` to `file` (relative to the folder) atomically and durably.

        Called with the log open, so no other writer takes the same file name meanwhile.
        """
        from safetensors.numpy import save

        path = self.folder / file
        tmp = path.with_name(f".{path.name}.tmp")
        data = save({key: array})  # serialised here, so a failed write is an OSError like any other
        try:
            if not path.parent.is_dir():
                make_dir(path.parent)
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):  # the first error is the one to report
                tmp.unlink(missing_ok=True)
            raise SessionError(f"{path}: cannot write ({exc.strerror}); recording stopped") from None

    def close(self) -> None:
        """Release the write lock (events are already on disk)."""
        if self.fd is not None:
            clear_lock_info(self.folder)
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace session.json atomically."""
    try:
        atomic_write(folder / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    except OSError as exc:
        raise SessionError(f"{folder / MANIFEST_FILE}: cannot write ({exc.strerror})") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
