"""The handler registry: one handler per request type, and `execute`, the only dispatcher.

A handler runs its request on an engine, summarises the result for a session (plain JSON plus named
arrays), compares a recorded summary with a recomputed one, describes a summary in one line and,
where it can, rebuilds a result from a summary (resuming a session shows it again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from mechscope.engine.capabilities import DESCRIPTIONS, MissingCapability
from mechscope.engine.errors import Cancelled, MechscopeError
from mechscope.requests.kinds import REQUEST_TYPES, Outcome, Request
from mechscope.requests.tolerance import Tolerance

OnPartial = Callable[[Any], None]
ShouldStop = Callable[[], bool]
# What an engine that does not declare `capabilities` is taken to offer: everything it runs itself.
LOCAL_CAPABILITIES = frozenset(DESCRIPTIONS) - {"forward"}


@dataclass
class Summary:
    """What a session keeps of a result: plain JSON `data` and named float `arrays`."""

    data: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class Handler:
    """How one request type runs, is summarised, compared, described and restored."""

    request_type: type
    needs: tuple[str, ...] = ()

    def needs_of(self, request: Any) -> tuple[str, ...]:
        """What this request needs of an engine: `needs`, plus what its options ask for."""
        return self.needs

    def run(self, engine: Any, request: Any, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> Any:
        raise NotImplementedError

    def summarise(self, result: Any) -> Summary:
        return Summary()

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        """Reasons the recomputed summary does not match the recorded one (empty when it matches)."""
        return []

    def describe(self, summary: Summary) -> str:
        """One line for replay and exported scripts."""
        return "done"

    def short(self, summary: Summary) -> str:
        """The few words a narrow column shows."""
        return self.describe(summary)

    def restore(self, request: Any, summary: Summary) -> Any:
        """The result rebuilt from a recorded summary, or None when this kind is not shown again."""
        return None

    def check(self, request: Any, summary: Summary) -> None:
        """ValueError naming what is wrong when a summary read from disk (or a request's bounds)
        cannot be this kind's: checked when a session is read, before anything uses it."""

    def inputs(self, request: Any) -> tuple[str, str | None, Any] | None:
        """The (clean, corrupted, metric) a request ran on, when it is the workbench's live run
        (resuming a session puts them back); None for other kinds."""
        return None

    def restore_key(self, request: Any) -> str:
        """Which earlier outcomes a newer one replaces when a session is resumed."""
        return str(request.kind)

    def bounded(self, request: Any, recorded: Summary) -> Any:
        """The request to re-run for comparing with `recorded`, bounded by what `recorded` holds."""
        return request

    def for_replay(self, engine: Any, request: Any, recorded: Summary) -> Any:
        """The request replay runs on `engine` to compare with `recorded` (ValueError if it cannot)."""
        return self.bounded(request, recorded)


HANDLERS: dict[type, Handler] = {}
_H = TypeVar("_H", bound=type[Handler])


def handles(request_type: type, needs: tuple[str, ...] = ()) -> Callable[[_H], _H]:
    """Register the decorated Handler class as the one handler of `request_type`."""
    unknown = set(needs) - set(DESCRIPTIONS)
    if unknown:
        raise ValueError(f"unknown capabilities {sorted(unknown)}")

    def register(cls: _H) -> _H:
        if request_type in HANDLERS:
            raise ValueError(f"{request_type.__name__} already has a handler")
        handler = cls()
        handler.request_type = request_type
        handler.needs = tuple(needs)
        HANDLERS[request_type] = handler
        return cls

    return register


def handler_for(request: Any) -> Handler:
    """The handler of a request (or request type); TypeError for something that is not a request."""
    cls = request if isinstance(request, type) else type(request)
    handler = HANDLERS.get(cls)
    if handler is None:
        raise TypeError(f"not a request: {cls.__name__}")
    return handler


def handler_of_kind(kind: str) -> Handler:
    """The handler of the request kind `kind` (as `request_to_dict` writes it); KeyError if unknown."""
    return HANDLERS[REQUEST_TYPES[kind]]


def capabilities(engine: Any) -> frozenset[str]:
    """What `engine` offers (its `capabilities`, a set of names; everything local when it declares
    none, or declares something else under that name)."""
    declared = getattr(engine, "capabilities", None)
    if not isinstance(declared, (set, frozenset)):
        return LOCAL_CAPABILITIES
    return frozenset(declared)


def missing_capability(engine: Any, request: Any) -> MissingCapability | None:
    """The first capability `request` needs that `engine` lacks, as the error refusing it."""
    offered = capabilities(engine)
    for need in handler_for(request).needs_of(request):
        if need not in offered:
            return MissingCapability(need, type(engine).__name__)
    return None


def user_message(exc: BaseException) -> str:
    """The one line a user sees for an engine error (the only place errors are worded for people)."""
    if isinstance(exc, MechscopeError):
        return str(exc)
    if isinstance(exc, (ValueError, TypeError)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def execute(engine: Any, request: Request, on_partial: OnPartial | None = None,
            should_stop: ShouldStop | None = None) -> Outcome:
    """Run `request` on `engine`. Never raises for engine errors: the outcome carries the message.

    A request whose needs the engine lacks is refused before anything runs. An engine with the
    "forward" capability gets the whole request (`engine.forward`); otherwise its handler runs it.
    `on_partial` receives streamed pieces (partial sweep results, generated tokens). A request
    stopped before it starts (superseded while its worker waited for a thread) never reaches the
    engine: it would take the engine from the request that replaced it."""
    started = time.perf_counter()
    if should_stop is not None and should_stop():
        return Outcome(request, cancelled=True)
    try:
        handler = handler_for(request)
        refusal = missing_capability(engine, request)
        if refusal is not None:
            raise refusal
        if "forward" in capabilities(engine):
            result = engine.forward(request, on_partial, should_stop)
        else:
            result = handler.run(engine, request, on_partial, should_stop)
    except Cancelled:
        return Outcome(request, cancelled=True, seconds=time.perf_counter() - started)
    except (MechscopeError, ValueError, TypeError) as exc:
        return Outcome(request, error=user_message(exc), seconds=time.perf_counter() - started)
    return Outcome(request, result=result, seconds=time.perf_counter() - started)


def need(data: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str = "") -> Any:
    """`data[key]`, which must be of `kind` (bool is never a number); ValueError naming it otherwise."""
    if key not in data:
        raise ValueError(f"outcome: missing field {key!r}")
    value = data[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ValueError(f"outcome.{key} must be {what or kind}, got a boolean")
    if not isinstance(value, kind):
        raise ValueError(f"outcome.{key} must be {what or kind}, got {type(value).__name__}")
    return value


def need_list(data: dict[str, Any], key: str, item: type | tuple[type, ...], what: str) -> list[Any]:
    """`data[key]`, a list whose items are all `item` (no booleans for numbers)."""
    values = need(data, key, list, f"a list of {what}")
    if not all(isinstance(v, item) and not isinstance(v, bool) for v in values):
        raise ValueError(f"outcome.{key} must be a list of {what}")
    return values


def need_array(summary: Summary, name: str, rank: int) -> np.ndarray:
    """The summary's array `name`, which must have `rank` axes."""
    array = summary.arrays.get(name)
    if array is None:
        raise ValueError(f"outcome: missing array {name!r}")
    if array.ndim != rank:
        raise ValueError(f"array {name!r} must have {rank} axes, got shape {list(array.shape)}")
    return array


NUMBER = (int, float)


def engine_method(engine: Any, name: str, capability: str) -> Callable[..., Any]:
    """The engine's method `name`, or the refusal naming `capability` when this engine has none."""
    method = getattr(engine, name, None)
    if not callable(method):
        raise MissingCapability(capability, type(engine).__name__)
    return method
