"""Runs any request on an engine and returns an outcome holding that request; errors become one line."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mechscope.engine.errors import Cancelled, MechscopeError
from mechscope.engine.protocol import EngineProtocol
from mechscope.workbench.requests import (
    AddVectorRequest,
    BuildVectorRequest,
    GenerateRequest,
    Outcome,
    ReferencePromptsRequest,
    Request,
    RunRequest,
    SweepRequest,
    ValidateRequest,
)

OnPartial = Callable[[Any], None]
ShouldStop = Callable[[], bool]


def user_message(exc: BaseException) -> str:
    """The one line a user sees for an engine error (the only place errors are worded for people)."""
    if isinstance(exc, MechscopeError):
        return str(exc)
    if isinstance(exc, (ValueError, TypeError)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


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
    raise TypeError(f"not a request: {type(request).__name__}")


def execute(engine: EngineProtocol, request: Request, on_partial: OnPartial | None = None,
            should_stop: ShouldStop | None = None) -> Outcome:
    """Run `request` on `engine`. Never raises for engine errors: the outcome carries the message.

    `on_partial` receives streamed pieces (partial SweepResult, GeneratedToken)."""
    started = time.perf_counter()
    try:
        result = _call(engine, request, on_partial, should_stop)
    except Cancelled:
        return Outcome(request, cancelled=True, seconds=time.perf_counter() - started)
    except (MechscopeError, ValueError, TypeError) as exc:
        return Outcome(request, error=user_message(exc), seconds=time.perf_counter() - started)
    return Outcome(request, result=result, seconds=time.perf_counter() - started)
