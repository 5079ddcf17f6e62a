"""The resident engine: `mechscope serve` keeps a model loaded; clients attach over a Unix socket.

`connect(NAME|PATH)` returns a `RemoteEngine` (the engine Protocol, no torch import on this side).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mechscope.serve.client import RemoteEngine


def connect(name_or_path: Any = None, client_name: str | None = None) -> RemoteEngine:
    """A `RemoteEngine` attached to a running server (by name, or socket path)."""
    from mechscope.serve.client import connect as _connect

    return _connect(name_or_path, client_name=client_name)


__all__ = ["connect"]
