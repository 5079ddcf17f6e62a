"""A request's fields checked against their annotations: every reader of a request (a session line, a
served message, an exported script) goes through `check_typed`, so a wrong type is refused with the
field's name instead of failing in the engine with whatever error it happens to cause."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from mechscope.engine.interventions import Intervention

MAX_SHOWN = 120  # characters of a value quoted in a message


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def check_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type_name(value)}")


def check_int(name: str, value: Any) -> None:
    if not is_int(value):
        raise ValueError(f"{name} must be an integer, got {type_name(value)}")


def check_number(name: str, value: Any) -> None:
    if not is_number(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {type_name(value)}")


SCALAR_CHECKS: dict[Any, Callable[[str, Any], None]] = {str: check_str, int: check_int, float: check_number,
                                                        bool: check_bool}


@functools.cache
def _field_types(cls: type) -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((item.name, hints[item.name]) for item in dataclasses.fields(cls))


def shown(value: Any, width: int = MAX_SHOWN) -> str:
    """`repr(value)` cut to `width` characters, for messages about values read from a file or a socket."""
    text = repr(value) if not isinstance(value, str) or len(value) < 4 * width else repr(value[:width])
    return text if len(text) <= width else text[:width - 1] + "…"


def check_typed(name: str, value: Any, hint: Any) -> None:
    """`value` fits the annotation `hint`, through nested dataclasses (a request's metric, views,
    prompt set); ValueError naming the field (`sweep.metric.position`) otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        if not isinstance(value, str) or value not in args:
            raise ValueError(f"{name} must be one of {', '.join(map(str, args))}, got {shown(value, 60)}")
    elif origin in (typing.Union, types.UnionType):
        options = [option for option in args if option is not type(None)]
        if value is None and len(options) < len(args):
            return
        if len(options) != 1:
            raise ValueError(f"unexpected annotation {hint} of {name}")
        check_typed(name, value, options[0])
    elif origin is tuple:
        if not isinstance(value, tuple):
            raise ValueError(f"{name} must be a list, got {type_name(value)}")
        for index, item in enumerate(value):
            check_typed(f"{name}[{index}]", item, args[0])
    elif hint in SCALAR_CHECKS:
        SCALAR_CHECKS[hint](name, value)
    elif isinstance(hint, type):
        if not isinstance(value, hint):
            raise ValueError(f"{name} must be a {hint.__name__}, got {type_name(value)}")
        # interventions check their own fields when built (`Intervention.from_dict`)
        if dataclasses.is_dataclass(hint) and not issubclass(hint, Intervention):
            for key, key_hint in _field_types(hint):
                check_typed(f"{name}.{key}", getattr(value, key), key_hint)
    else:
        raise ValueError(f"unexpected annotation {hint} of {name}")
