"""Load the engine a set of model options asks for: the native one or a backend's, by name."""

from __future__ import annotations

import argparse
from typing import Any


def model_settings(args: argparse.Namespace, default_model: str | None = "demo") -> dict[str, Any]:
    """The keyword arguments of `Engine.load` the options ask for."""
    return {"source": args.model if args.model is not None else default_model,
            "device": args.device or "auto", "dtype": args.dtype or "auto",
            "trust_remote_code": bool(args.trust_remote_code),
            "device_map": getattr(args, "device_map", None), "max_memory": getattr(args, "max_memory", None)}


def load_engine(settings: dict[str, Any], backend: str | None, progress: Any = None) -> Any:
    """`Engine.load(**settings)`, or the nnsight/ndif backend's engine for the same model settings."""
    if backend in (None, "native"):
        from mechscope.engine import Engine

        return Engine.load(progress=progress, **settings)
    from mechscope.backends import load_backend

    placement = ("device_map", "max_memory")  # the native engine's (refused with a backend by check_backend)
    return load_backend(backend=backend, progress=progress,
                        **{k: v for k, v in settings.items() if k not in placement})
