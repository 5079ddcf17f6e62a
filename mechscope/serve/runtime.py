"""Where servers live: the private runtime directory, socket paths by name, and each server's card.

A server named N listens on `<runtime dir>/N.sock`, holds an exclusive lock on `N.lock` for its
whole life (so a live server is told apart from a stale socket without racing) and describes
itself in `N.json` (pid, model, device). `--socket PATH` uses `PATH`, `PATH.lock`, `PATH.json`.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mechscope.engine.errors import MechscopeError

DEFAULT_NAME = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ServeError(MechscopeError):
    """A server cannot start, be found or be stopped; the message says why."""


def runtime_dir(create: bool = True) -> Path:
    """$MECHSCOPE_RUNTIME_DIR, else the per-user runtime dir ($XDG_RUNTIME_DIR/mechscope), else a
    private directory under the system temp dir. Created 0700."""
    override = os.environ.get("MECHSCOPE_RUNTIME_DIR")
    if override:
        path = Path(override).expanduser()
    elif os.environ.get("XDG_RUNTIME_DIR") and Path(os.environ["XDG_RUNTIME_DIR"]).is_dir():
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "mechscope"
    else:
        path = Path(tempfile.gettempdir()) / f"mechscope-{os.getuid()}"
    if create and not path.exists():
        path.mkdir(mode=0o700, parents=True)
    return path


def check_private(directory: Path) -> None:
    """ServeError unless `directory` is owned by this user and closed to group and others."""
    try:
        st = directory.stat()
    except FileNotFoundError:
        raise ServeError(f"the socket directory {directory} does not exist") from None
    if st.st_uid != os.getuid():
        raise ServeError(f"the socket directory {directory} belongs to another user; refusing to serve there")
    if st.st_mode & 0o077:
        raise ServeError(
            f"the socket directory {directory} is accessible to group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 700 {directory}` or choose another")


@dataclass(frozen=True)
class Place:
    """The files of one server."""

    name: str
    socket: Path

    @property
    def lock(self) -> Path:
        return self.socket.with_name(self.socket.name.removesuffix(".sock") + ".lock")

    @property
    def card(self) -> Path:
        return self.socket.with_name(self.socket.name.removesuffix(".sock") + ".json")


def place(name_or_path: str | os.PathLike | None = None, create: bool = True) -> Place:
    """The server called `name_or_path` (a name, or a path when it contains a slash or ends .sock)."""
    target = str(name_or_path) if name_or_path is not None else DEFAULT_NAME
    if "/" in target or target.endswith(".sock"):
        path = Path(target).expanduser().absolute()
        return Place(path.name.removesuffix(".sock"), path)
    if not _NAME.match(target):
        raise ServeError(f"server name {target!r}: use letters, digits, '.', '_' or '-' (up to 64)")
    return Place(target, runtime_dir(create) / f"{target}.sock")


def read_card(p: Place) -> dict | None:
    try:
        data = json.loads(p.card.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_card(p: Place, card: dict) -> None:
    tmp = p.card.with_name(p.card.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(card, fh)
    os.replace(tmp, p.card)


def all_places() -> list[Place]:
    """Every server with a socket in the runtime directory (live or stale)."""
    directory = runtime_dir(create=False)
    if not directory.is_dir():
        return []
    return [Place(s.name.removesuffix(".sock"), s) for s in sorted(directory.glob("*.sock"))]
