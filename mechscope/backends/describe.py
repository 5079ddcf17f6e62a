"""Which backend an engine runs on, in words for the header and as data for a session's manifest."""

from __future__ import annotations

from typing import Any

NATIVE = {"backend": "native"}


def backend_status(engine: Any) -> str | None:
    """The header's note on the backend ("nnsight (local): full recompute on every change"); None
    for the native engine, which needs none."""
    capabilities = getattr(engine, "capabilities", None)
    return None if capabilities is None else str(capabilities.status)


def backend_record(engine: Any) -> dict[str, Any]:
    """What a session records about the backend: `capabilities.to_dict()`, or {"backend": "native"}."""
    capabilities = getattr(engine, "capabilities", None)
    return dict(NATIVE) if capabilities is None else dict(capabilities.to_dict())


def backend_name(record: Any) -> str:
    """The backend a manifest's record names ("native" when the session predates the record)."""
    return str(record.get("backend", "native")) if isinstance(record, dict) else "native"
