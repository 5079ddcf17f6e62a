"""Which backend an engine runs on, in words for the header and as data for a session's manifest."""

from __future__ import annotations

from typing import Any

NATIVE = {"backend": "native"}


def _described(engine: Any) -> Any:
    """The engine's backend description (`status`, `to_dict()`): its `backend` (a served engine's)
    or a `capabilities` object that describes itself (the nnsight engine's); None for the native one."""
    for name in ("backend", "capabilities"):
        value = getattr(engine, name, None)
        if hasattr(value, "status") and hasattr(value, "to_dict"):
            return value
    return None


def backend_status(engine: Any) -> str | None:
    """The header's note on the backend ("nnsight (local): full recompute on every change"); None
    for the native engine, which needs none."""
    described = _described(engine)
    return None if described is None else str(described.status)


def backend_record(engine: Any) -> dict[str, Any]:
    """What a session records about the backend: its description's `to_dict()`, or {"backend": "native"}."""
    described = _described(engine)
    return dict(NATIVE) if described is None else dict(described.to_dict())


def backend_name(record: Any) -> str:
    """The backend a manifest's record names ("native" when the session predates the record)."""
    return str(record.get("backend", "native")) if isinstance(record, dict) else "native"
