"""Other engines behind `EngineProtocol`: nnsight traces, run locally or on NDIF (nnsight is optional)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mechscope.engine.errors import LoadError

if TYPE_CHECKING:
    from mechscope.backends.nnsight_engine import NNsightEngine
    from mechscope.engine.protocol import EngineProtocol

BACKENDS: tuple[str, ...] = ("native", "nnsight", "ndif")


def nnsight_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("nnsight") is not None


def _require_nnsight(backend: str) -> None:
    if not nnsight_available():
        raise LoadError(f"the {backend} backend needs nnsight: pip install 'mechscope[nnsight]'")


def load_backend(source: str = "demo", backend: str = "nnsight", device: str = "auto",
                 dtype: str = "auto", remote: bool | str | None = None, trust_remote_code: bool = False,
                 progress: Any = None) -> NNsightEngine:
    """An nnsight engine for `source`.

    backend "nnsight": the model is loaded here exactly as the native engine loads it
    (`load_model`) and traced locally (remote="local" serialises each request as NDIF would first).
    backend "ndif": `source` is a Hugging Face repo id hosted on NDIF; only its config and tokenizer
    are fetched (weights stay remote) and every request is sent to NDIF after the preflight checks.
    """
    if backend not in ("nnsight", "ndif"):
        raise LoadError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "nnsight" and remote not in (None, False, "local"):
        raise LoadError("the nnsight backend runs here (remote=False or \"local\"); use backend=\"ndif\" "
                        "to run on NDIF")
    _require_nnsight(backend)
    from mechscope.backends.nnsight_engine import NNsightEngine

    if backend == "nnsight":
        from mechscope.engine.loading import load_model

        loaded = load_model(source, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                            progress=progress)
        return NNsightEngine(loaded.model, loaded.tokenizer, source=loaded.source,
                             weights_digest=loaded.weights_digest, name=loaded.name,
                             remote=remote or False)
    from mechscope.backends.ndif import check_api_key

    check_api_key()  # before anything touches the network
    from nnsight import TransformersModel

    try:
        lm = TransformersModel(source, task="text-generation", trust_remote_code=trust_remote_code)
    except Exception as exc:  # hub errors, unknown repo, offline: one line for the user
        raise LoadError(f"cannot read {source!r} from the Hugging Face hub for NDIF: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return NNsightEngine(lm._module, lm.tokenizer, source=source, name=source, remote=True, lm=lm)


def model_settings(args: argparse.Namespace, default_model: str | None = "demo") -> dict[str, Any]:
    """The keyword arguments of `Engine.load` the command-line options (`args`) ask for."""
    return {"source": args.model if args.model is not None else default_model,
            "device": args.device or "auto", "dtype": args.dtype or "auto",
            "trust_remote_code": bool(args.trust_remote_code),
            "device_map": getattr(args, "device_map", None), "max_memory": getattr(args, "max_memory", None)}


def load_engine(settings: dict[str, Any], backend: str | None, progress: Any = None) -> EngineProtocol:
    """`Engine.load(**settings)`, or the nnsight/ndif backend's engine for the same model settings."""
    if backend in (None, "native"):
        from mechscope.engine import Engine

        return Engine.load(progress=progress, **settings)
    placement = ("device_map", "max_memory")  # the native engine's (refused with a backend by check_backend)
    return load_backend(backend=backend, progress=progress,
                        **{k: v for k, v in settings.items() if k not in placement})


__all__ = ["BACKENDS", "load_backend", "load_engine", "model_settings", "nnsight_available"]
