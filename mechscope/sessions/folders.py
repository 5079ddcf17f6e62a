"""Session folders without opening their logs: manifest, listing, the writer lock, rename and remove.

Nothing here parses events beyond a bounded scan for the list, so a session too damaged to open can
still be listed (marked unusable), renamed and removed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechscope.requests.field_types import shown
from mechscope.sessions.errors import SessionError
from mechscope.sessions.paths import (
    EVENTS_FILE,
    LOCK_INFO_FILE,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    TENSORS_DIR,
    check_name,
    sessions_root,
)
from mechscope.sessions.reading import (
    MAX_LINE_BYTES,
    MAX_LOG_BYTES,
    MAX_MANIFEST_BYTES,
    check_depth,
    check_values,
    loads,
    read_regular,
)

FILE_MODE = 0o600  # prompts and findings can be confidential: user-only
DIR_MODE = 0o700
MAX_LISTED = 10_000  # session folders looked at by one listing
SUMMARY_TEXT = 200  # characters of a prompt or an error kept in a list row


@dataclass(frozen=True)
class SessionSummary:
    """One row of `Session.list`. `error` is set (and the rest partial) for a session that won't load."""

    name: str
    path: Path
    model: str
    created: str
    n_events: int
    last_prompt: str
    error: str = ""


# -- files ------------------------------------------------------------------------------------

def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` (user-only) to a temp file, fsync it, then `os.replace` it over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0),
                     FILE_MODE)
        with open(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def make_dir(path: Path, exist_ok: bool = False) -> None:
    """mkdir with user-only permissions (also when the umask would allow more)."""
    path.mkdir(mode=DIR_MODE, exist_ok=exist_ok)
    if not path.is_symlink():
        os.chmod(path, DIR_MODE)


def _line_of(text: str, needle: str) -> int:
    index = text.find(needle)
    return 1 if index < 0 else text.count("\n", 0, index) + 1


def load_manifest(path: Path) -> dict[str, Any]:
    """Read and validate session.json; SessionError as `path:line: reason`."""
    if not path.exists() and not path.is_symlink():
        raise SessionError(f"{path}: missing (not a mechscope session folder)")
    raw = read_regular(path, MAX_MANIFEST_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SessionError(f"{path}:{line}: not UTF-8 text (not a mechscope session file)") from None
    try:
        check_depth(raw)
        manifest = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise SessionError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except ValueError as exc:
        raise SessionError(f"{path}:1: invalid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise SessionError(f"{path}:1: the manifest must be a JSON object")
    try:
        check_values(manifest)
    except ValueError as exc:
        raise SessionError(f"{path}:1: {exc}") from None
    version = manifest.get("schema_version")
    line = _line_of(text, '"schema_version"')
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SessionError(f"{path}:{line}: schema_version must be a positive integer, "
                           f"got {shown(version)}")
    if version > SCHEMA_VERSION:
        raise SessionError(
            f"{path}:{line}: schema version {version} is newer than this mechscope supports "
            f"({SCHEMA_VERSION}); upgrade mechscope to open this session"
        )
    for key in ("name", "created"):
        if not isinstance(manifest.get(key), str):
            raise SessionError(f"{path}:{_line_of(text, json.dumps(key))}: {key} must be a string")
    model = manifest.get("model")
    if model is not None and not (isinstance(model, dict) and isinstance(model.get("source"), str)):
        line = _line_of(text, '"model"')
        raise SessionError(f"{path}:{line}: model must be null or an object with a source string")
    return manifest


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# -- listing ----------------------------------------------------------------------------------

def list_sessions(root: Path) -> list[SessionSummary]:
    """Every session folder under `root`, newest first; damaged ones carry `error`. Bounded memory."""
    if not root.is_dir():
        return []
    summaries = []
    try:
        with os.scandir(root) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_LISTED:
                    break
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                if entry.is_symlink():
                    summaries.append(_unusable(path, f"{path}: is a symbolic link (not followed)"))
                elif entry.is_dir(follow_symlinks=False):
                    try:
                        summaries.append(summarise(path))
                    except (OSError, ValueError) as exc:  # this session's trouble, not the listing's
                        summaries.append(_unusable(path, f"{path}: cannot read ({reason_of(exc)})"))
    except OSError as exc:
        raise SessionError(f"{root}: cannot list ({exc.strerror})") from None
    return sorted(summaries, key=lambda s: (s.created, s.name), reverse=True)


def reason_of(exc: BaseException) -> str:
    """An OSError's strerror, else the error's text."""
    return str(getattr(exc, "strerror", None) or exc or type(exc).__name__)


def _unusable(path: Path, error: str) -> SessionSummary:
    return SessionSummary(_clip(path.name), path, "?", "", 0, "", error=_clip(error, 300))


def _clip(text: str, width: int = SUMMARY_TEXT) -> str:
    text = text.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return text if len(text) <= width else text[:width - 1] + "…"


def summarise(path: Path) -> SessionSummary:
    """A list row from the manifest and a bounded scan of the log (events are not validated)."""
    try:
        manifest = load_manifest(path / MANIFEST_FILE)
    except SessionError as exc:
        return _unusable(path, str(exc))
    model = manifest.get("model") or {}
    model_label = _clip(str(model.get("name") or model.get("source") or "-"), 80)
    created = _clip(str(manifest["created"]), 40)
    try:
        n_events, last_prompt = _scan_log(path / EVENTS_FILE)
        _check_tensor_files(path / TENSORS_DIR)
    except SessionError as exc:
        return SessionSummary(path.name, path, model_label, created, 0, "", error=_clip(str(exc), 300))
    return SessionSummary(path.name, path, model_label, created, n_events, last_prompt)


def _check_tensor_files(folder: Path) -> None:
    """Every entry of tensors/ must be a regular file (their contents are checked on open)."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise SessionError(f"{folder}: not a folder (links are not followed)")
    try:
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_LISTED:
                    break
                if not entry.name.startswith(".") and not entry.is_file(follow_symlinks=False):
                    raise SessionError(f"{folder / entry.name}: not a regular file")
    except OSError as exc:
        raise SessionError(f"{folder}: cannot list ({exc.strerror})") from None


def _scan_log(path: Path) -> tuple[int, str]:
    """Count the events and find the last prompt, a line at a time and at most MAX_LOG_BYTES.

    Each line is parsed (bounded) and must look like an event; full validation needs the engine's
    intervention types and is left to `Session.open`. SessionError names the first bad line.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        reason = "missing" if isinstance(exc, FileNotFoundError) else (
            "is a symbolic link (not followed)" if path.is_symlink() else f"cannot read ({exc.strerror})")
        raise SessionError(f"{path}: {reason}") from None
    try:
        info = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise SessionError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):  # a directory or device where the log should be
        os.close(fd)
        raise SessionError(f"{path}: not a regular file")
    n_events, last_prompt, total = 0, "", 0
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise SessionError(f"{path}: not a regular file")
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            total += len(raw)
            if not raw:
                break
            where = f"{path}:{n_events + 1}"
            if total > MAX_LOG_BYTES:
                raise SessionError(f"{path}: larger than the {MAX_LOG_BYTES} bytes a log may hold")
            if len(raw) > MAX_LINE_BYTES:
                raise SessionError(f"{where}: a line longer than {MAX_LINE_BYTES} bytes")
            if not raw.endswith(b"\n"):
                if not raw.startswith(b'{"seq":'[:len(raw)]) and not raw.startswith(b'{"seq":'):
                    raise SessionError(f"{where}: the last line is not an event")
                break  # an interrupted write: `Session.open` drops it with a warning
            try:
                data = loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
                raise SessionError(f"{where}: {_clip(reason, 200)}") from None
            seq = data.get("seq") if isinstance(data, dict) else None
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= 2**53 \
                    or not isinstance(data.get("kind"), str):
                raise SessionError(f"{where}: not an event (an object with seq and kind)")
            n_events += 1
            # the prompt of a prompt event or of a run (an older run event or a run request); read
            # without importing the request handlers, so listing stays light
            holder = data.get("request") if data["kind"] == "request" else data
            if isinstance(holder, dict) and (data["kind"] == "prompt" or holder.get("kind") == "run"):
                prompt = holder.get("clean", holder.get("prompt"))
                last_prompt = _clip(prompt) if isinstance(prompt, str) else last_prompt
    return n_events, last_prompt


# -- the writer lock --------------------------------------------------------------------------

def lock_holder(folder: Path) -> str:
    """Who holds `folder`'s write lock, as `pid N on HOST since TIME` (as much as is known)."""
    try:
        info = json.loads(read_regular(folder / LOCK_INFO_FILE, 4096))
    except (SessionError, ValueError):
        return "another mechscope process"
    if not isinstance(info, dict):
        return "another mechscope process"
    parts = []
    if isinstance(info.get("pid"), int):
        parts.append(f"pid {info['pid']}")
    if isinstance(info.get("host"), str):
        parts.append(f"on {_clip(info['host'], 64)}")
    if isinstance(info.get("since"), str):
        parts.append(f"since {_clip(info['since'], 40)}")
    return "another mechscope process" + (f" ({' '.join(parts)})" if parts else "")


def write_lock_info(folder: Path) -> None:
    """Say who holds the lock, for the message another process shows (best effort)."""
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        atomic_write(folder / LOCK_INFO_FILE, json.dumps(info).encode())
    except OSError:
        pass


def clear_lock_info(folder: Path) -> None:
    try:
        (folder / LOCK_INFO_FILE).unlink()
    except OSError:
        pass


@contextmanager
def exclusive(folder: Path, doing: str) -> Iterator[None]:
    """Hold the session's write lock while renaming or removing it; refuse while a writer holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        yield
        return
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(folder / EVENTS_FILE, flags)
    except OSError:  # no log (or not a file): nobody can be recording into it
        yield
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise SessionError(f"cannot {doing} session {folder.name!r}: it is being recorded by "
                                   f"{lock_holder(folder)}") from None
        yield
    finally:
        os.close(fd)


# -- rename and remove ------------------------------------------------------------------------

def session_folder(name: str, root: str | Path | None = None) -> Path:
    """The folder of the session called `name` (a name, never a path), checked to be a real session folder."""
    try:
        check_name(name)
    except ValueError as exc:
        raise SessionError(f"{exc} (give a session name, not a path)") from None
    root_path = Path(root) if root is not None else sessions_root()
    folder = root_path / name
    if folder.is_symlink():
        raise SessionError(f"{folder} is a symbolic link, not a session folder; remove the link yourself")
    if not folder.is_dir():
        raise SessionError(f"no session named {name!r} ({folder} does not exist); "
                           "`mechscope sessions` lists them")
    manifest = folder / MANIFEST_FILE
    if not manifest.exists() and not manifest.is_symlink():
        raise SessionError(f"{folder} does not look like a session (no {MANIFEST_FILE}); not touching it")
    return folder


def remove_folder(folder: Path) -> None:
    """Delete a session folder, refused while another process records into it. Needs no parse."""
    if folder.is_symlink() or not folder.is_dir():
        raise SessionError(f"{folder} is not a session folder; not deleting it")
    if not (folder / MANIFEST_FILE).exists() and not (folder / MANIFEST_FILE).is_symlink():
        raise SessionError(f"{folder} does not look like a session (no {MANIFEST_FILE}); not deleting it")
    with exclusive(folder, "delete"):
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            raise SessionError(f"cannot delete {folder} ({exc.strerror})") from None


def remove_session(name: str, root: str | Path | None = None) -> None:
    remove_folder(session_folder(name, root))


def rename_folder(folder: Path, new_name: str) -> Path:
    """Rename a session folder and its manifest's name; refused while it is recorded into."""
    try:
        check_name(new_name)
    except ValueError as exc:
        raise SessionError(str(exc)) from None
    target = folder.parent / new_name
    if target.exists() or target.is_symlink():
        raise SessionError(f"a session named {new_name!r} already exists ({target})")
    manifest = load_manifest(folder / MANIFEST_FILE)
    with exclusive(folder, "rename"):
        try:
            os.rename(folder, target)
        except OSError as exc:
            raise SessionError(f"cannot rename {folder} to {target} ({exc.strerror})") from None
        fsync_dir(target.parent)
        manifest["name"] = new_name
        atomic_write(target / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    return target


def rename_session(name: str, new_name: str, root: str | Path | None = None) -> Path:
    return rename_folder(session_folder(name, root), new_name)
