"""Runs any request on an engine and returns an outcome holding that request; errors become one line."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mechscope.engine.capabilities import MissingCapability
from mechscope.engine.errors import Cancelled, MechscopeError
from mechscope.engine.interventions import HeadAblation
from mechscope.engine.prompt_sets import template_set
from mechscope.engine.protocol import EngineProtocol
from mechscope.workbench.requests import (
    AddVectorRequest,
    BuildVectorRequest,
    DetectHeadsRequest,
    EstimateRequest,
    GenerateRequest,
    MassiveRequest,
    Outcome,
    ReferencePromptsRequest,
    Request,
    RunRequest,
    RunSetRequest,
    SweepRequest,
    SweepSetRequest,
    TemplateSetRequest,
    ValidateRequest,
)
from mechscope.workbench.set_results import VerifiedEstimate

OnPartial = Callable[[Any], None]
ShouldStop = Callable[[], bool]


def user_message(exc: BaseException) -> str:
    """The one line a user sees for an engine error (the only place errors are worded for people)."""
    if isinstance(exc, MechscopeError):
        return str(exc)
    if isinstance(exc, (ValueError, TypeError)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def forwards(engine: EngineProtocol) -> bool:
    """Whether `engine` takes whole requests (capability "forward": a server's client)."""
    capabilities = getattr(engine, "capabilities", None)
    return isinstance(capabilities, (set, frozenset)) and "forward" in capabilities


def _call(engine: EngineProtocol, request: Request, on_partial: OnPartial | None,
          should_stop: ShouldStop | None) -> Any:
    if isinstance(request, RunRequest):
        return engine.run(request.prompt, request.interventions, views=request.views,
                          metric=request.metric, corrupted=request.corrupted, top_k=request.top_k,
                          should_stop=should_stop)
    if isinstance(request, SweepRequest):
        on_top = {"interventions": request.interventions} if request.interventions else {}
        return engine.sweep(request.sweep_kind, request.clean, request.corrupt, request.metric,
                            direction=request.direction, on_progress=on_partial,
                            should_stop=should_stop, **on_top)
    if isinstance(request, GenerateRequest):
        return engine.generate(request.prompt, request.interventions,
                               max_new_tokens=request.max_new_tokens,
                               temperature=request.temperature, seed=request.seed,
                               corrupted=request.corrupted, on_token=on_partial,
                               should_stop=should_stop)
    if isinstance(request, BuildVectorRequest):
        return engine.build_steering_vector(request.name, request.layer, request.positive,
                                            request.negative)
    if isinstance(request, AddVectorRequest):
        engine.add_vector(request.name, request.vector)
        return engine.vectors[request.name]
    if isinstance(request, ValidateRequest):
        engine.validate(request.interventions, request.prompt, request.corrupted)
        return None
    if isinstance(request, ReferencePromptsRequest):
        engine.set_reference_prompts(request.prompts)
        return None
    if isinstance(request, RunSetRequest):
        return _method(engine, "run_set", "prompt_sets")(
            request.pset, request.metric_kind, request.interventions, request.prompt)
    if isinstance(request, SweepSetRequest):
        return _method(engine, "sweep_set", "prompt_sets")(
            request.pset, kind=request.metric_kind, direction=request.direction,
            source=request.source, on_progress=on_partial, should_stop=should_stop)
    if isinstance(request, EstimateRequest):
        return _estimate(engine, request, should_stop)
    if isinstance(request, DetectHeadsRequest):
        return _method(engine, "detect_heads", "head_detectors")()
    if isinstance(request, TemplateSetRequest):
        tokenizer = getattr(engine, "tokenizer", None)
        if tokenizer is None:
            raise MissingCapability("tokenizer", type(engine).__name__)
        return template_set(request.template, tokenizer, request.count, request.seed)
    if isinstance(request, MassiveRequest):
        return _method(engine, "massive_activations", "massive_activations")(request.pset, request.ratio)
    raise TypeError(f"not a request: {type(request).__name__}")


def _method(engine: EngineProtocol, name: str, capability: str) -> Callable[..., Any]:
    """The engine's method `name`; an engine without it (nnsight) lacks `capability`."""
    method = getattr(engine, name, None)
    if not callable(method):
        raise MissingCapability(capability, type(engine).__name__)
    return method


def _estimate(engine: EngineProtocol, request: EstimateRequest, should_stop: ShouldStop | None) -> VerifiedEstimate:
    """The estimate's mean per head, and for its top `verify_top_k` heads (by |value|) the exact
    noising patch (the head's output from the row's corrupted prompt) averaged over the set."""
    if request.verify_top_k < 0:
        raise ValueError(f"verify_top_k must not be negative, got {request.verify_top_k}")
    if request.verify_top_k and request.direction != "noising":
        raise ValueError("verify patches heads noising (corrupted into clean); set direction to noising")
    estimate = _method(engine, "estimate", "estimates")(
        request.pset, request.method, request.steps, kind=request.metric_kind,
        direction=request.direction)
    values = np.asarray(estimate.mean, dtype=np.float64)  # [layer, head]
    exact: dict[tuple[int, int], float] = {}
    order = np.argsort(-np.abs(np.nan_to_num(values)).ravel(), kind="stable")[:request.verify_top_k]
    run_set = _method(engine, "run_set", "prompt_sets")
    for index in order:
        if should_stop is not None and should_stop():
            raise Cancelled("verify stopped")
        layer, head = divmod(int(index), values.shape[1])
        patched = run_set(request.pset, request.metric_kind, (HeadAblation(layer, head, "resample"),))
        exact[(layer, head)] = float(np.mean(np.asarray(patched.values) - np.asarray(patched.baseline)))
    return VerifiedEstimate(request.method, values, exact, float(getattr(estimate, "seconds", 0.0)))


def execute(engine: EngineProtocol, request: Request, on_partial: OnPartial | None = None,
            should_stop: ShouldStop | None = None) -> Outcome:
    """Run `request` on `engine`. Never raises for engine errors: the outcome carries the message.

    `on_partial` receives streamed pieces (partial SweepResult, GeneratedToken)."""
    started = time.perf_counter()
    try:
        if forwards(engine):
            result = engine.forward(request, on_partial, should_stop)  # type: ignore[attr-defined]
        else:
            result = _call(engine, request, on_partial, should_stop)
    except Cancelled:
        return Outcome(request, cancelled=True, seconds=time.perf_counter() - started)
    except (MechscopeError, ValueError, TypeError) as exc:
        return Outcome(request, error=user_message(exc), seconds=time.perf_counter() - started)
    return Outcome(request, result=result, seconds=time.perf_counter() - started)
