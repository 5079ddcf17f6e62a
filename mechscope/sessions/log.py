"""Reading events.jsonl: every line validated and folded into the state, an interrupted last line dropped."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from mechscope.sessions.errors import SessionError
from mechscope.sessions.events import Event, event_from_json, tensor_files
from mechscope.sessions.paths import EVENTS_FILE
from mechscope.sessions.reading import MAX_LOG_BYTES, load_tensor, loads, read_regular
from mechscope.sessions.state import StateBuilder

logger = logging.getLogger("mechscope.sessions.store")


class Log:
    """What reading events.jsonl yields: the events, their folded state and where appends go."""

    def __init__(self, events: list[Event], warnings: list[str], valid_size: int,
                 needs_newline: bool, tensors: dict[str, np.ndarray], builder: StateBuilder,
                 stamp: tuple[int, int, int]) -> None:
        self.events, self.warnings, self.valid_size = events, warnings, valid_size
        self.needs_newline, self.tensors, self.builder, self.stamp = (needs_newline, tensors, builder,
                                                                      stamp)

    @classmethod
    def empty(cls) -> Log:
        return cls([], [], 0, False, {}, StateBuilder(), (0, 0, 0))


def stamp(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_size, info.st_mtime_ns, info.st_ino


def read_log(path: Path) -> Log:
    events_path = path / EVENTS_FILE
    try:
        info = os.stat(events_path, follow_symlinks=False)
    except OSError:
        info = None
    data = read_regular(events_path, MAX_LOG_BYTES)
    log = parse_log(path, data)
    if info is not None and info.st_size == len(data):
        log.stamp = stamp(info)
    return log


def parse_log(path: Path, data: bytes) -> Log:
    events_path = path / EVENTS_FILE
    tail_start = data.rfind(b"\n") + 1
    tail = data[tail_start:]  # bytes after the last newline
    events: list[Event] = []
    warnings: list[str] = []
    tensors: dict[str, np.ndarray] = {}
    builder = StateBuilder()
    valid_size, needs_newline = tail_start, False

    def accept(raw: bytes, number: int, is_tail: bool) -> bool:
        """Validate one line and fold it in; False for an unparseable unterminated last line."""
        where = f"{events_path}:{number}"
        try:
            event = _parse_line(raw, number)
        except Exception as exc:  # untrusted bytes: any failure to read this line is the line's fault
            if is_tail and _looks_interrupted(raw):
                message = (f"{where}: last line is incomplete (the session was interrupted while "
                           f"writing it) and was dropped ({reason(exc)})")
                warnings.append(message)
                logger.warning(message)
                return False
            raise SessionError(f"{where}: {reason(exc)}") from None
        for file, (key, shape, finite) in tensor_files(event).items():
            tensors[file] = load_tensor(path, file, key, shape, where, finite=finite)
        try:
            if events and event.seq <= events[-1].seq:
                raise ValueError(f"seq {event.seq} does not follow seq {events[-1].seq}")
            builder.apply(event)
        except Exception as exc:
            raise SessionError(f"{where}: {reason(exc)}") from None
        events.append(event)
        return True

    # One line at a time, not `data.split`: a 64 MiB log of empty lines would be 64 million byte
    # strings (a gigabyte, ten seconds) before its first line is refused.
    start, number = 0, 0
    while start < tail_start:
        end = data.index(b"\n", start)
        number += 1
        accept(data[start:end], number, is_tail=False)
        start = end + 1
    if tail and accept(tail, number + 1, is_tail=True):
        needs_newline, valid_size = True, len(data)
    return Log(events, warnings, valid_size, needs_newline, tensors, builder, (-1, -1, -1))


def _parse_line(raw: bytes, number: int) -> Event:
    if not raw.strip():
        raise ValueError("empty line")
    return event_from_json(loads(raw), number)


def _looks_interrupted(raw: bytes) -> bool:
    """Whether an unterminated last line is the start of an event line as `record` writes it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.end != len(raw):  # bad bytes in the middle, not a character cut at the end
            return False
        text = raw[:exc.start].decode("utf-8", errors="replace")
    start = '{"seq":'
    return text.startswith(start) or start.startswith(text)


def reason(exc: BaseException) -> str:
    """The first line of an error's message, cut short: a crafted file can hold megabyte values."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    text = str(exc) or type(exc).__name__
    line = text.splitlines()[0] if text.strip() else type(exc).__name__
    line = line.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return line if len(line) <= 300 else line[:299] + "…"
