"""Event kinds of the session log and their validation: every field of every line is checked on load."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mechscope.engine.interventions import Intervention
from mechscope.engine.metric import SET_METRIC_KINDS, Metric
from mechscope.engine.prompt_sets import FIELDS
from mechscope.engine.results import DIRECTIONS, EFFECT_SCALES, SWEEP_KINDS
from mechscope.requests.field_types import (
    check_bool,
    check_int,
    check_number,
    check_str,
    check_typed,
    type_name,
)

TENSOR_FILE = re.compile(r"^tensors/[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors$")
INTERVENTION_ACTIONS = ("added", "changed", "toggled", "removed")
SET_SOURCES = ("prompts", "mean")
MAX_SET_ROWS = 10_000  # rows of one recorded prompt set (the engine's limit)
RESERVED = ("seq", "time", "kind")
MAX_ARRAYS = 64  # named arrays of one request event
ARRAY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}$")
# Event kinds written before work was recorded as requests, and the request kind each stands for.
LEGACY_WORK: dict[str, str] = {"run": "run", "sweep": "sweep", "generate": "generate",
                               "set_run": "run_set", "set_sweep": "sweep_set"}


@dataclass(frozen=True)
class Event:
    """One line of `events.jsonl`. `line` is its 1-based line number (0 before it is written)."""

    seq: int
    time: float
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    line: int = 0

    def __getitem__(self, key: str) -> Any:
        return self.payload[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.payload.get(key, default)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "kind": self.kind, **self.payload}


Checker = Callable[[str, Any], None]


def check_opt_str(name: str, value: Any) -> None:
    if value is not None:
        check_str(name, value)


def check_count(name: str, value: Any) -> None:
    check_int(name, value)
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


def check_opt_number(name: str, value: Any) -> None:
    if value is not None:
        check_number(name, value)


def check_opt_bool(name: str, value: Any) -> None:
    if value is not None:
        check_bool(name, value)


def list_of(check: Checker) -> Checker:
    def check_list(name: str, value: Any) -> None:
        if not isinstance(value, list):
            raise ValueError(f"{name} must be a list, got {type_name(value)}")
        for index, item in enumerate(value):
            check(f"{name}[{index}]", item)

    return check_list


def one_of(*choices: str) -> Checker:
    def check_choice(name: str, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")

    return check_choice


def check_tensor_file(name: str, value: Any) -> None:
    check_str(name, value)
    if not TENSOR_FILE.match(value) or ".." in value:
        raise ValueError(f"{name} must be tensors/<file>.safetensors, got {value!r}")


def check_metric(name: str, value: Any) -> None:
    """None, or a `Metric.to_dict()` object."""
    if value is None:
        return
    check_typed(name, Metric.from_dict(value), Metric)


def check_intervention(name: str, value: Any) -> None:
    Intervention.from_dict(value)


def check_outcome(name: str, value: Any) -> None:
    """The recorded result of a run: top-k ids, token texts and probabilities, metric and baseline metric."""
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object, got {type_name(value)}")
    fields: dict[str, Checker] = {
        "top_ids": list_of(check_count),
        "top_tokens": list_of(check_str),
        "top_probs": list_of(check_number),
        "metric": check_opt_number,
        "baseline_metric": check_opt_number,
    }
    _check_fields(name, value, fields)
    if not len(value["top_ids"]) == len(value["top_tokens"]) == len(value["top_probs"]):
        raise ValueError(f"{name}: top_ids, top_tokens and top_probs differ in length")


def check_object(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object, got {type_name(value)}")


def check_arrays(name: str, value: Any) -> None:
    """Named arrays of a request's outcome: name -> {"file": tensors/..., "shape": [...]}."""
    check_object(name, value)
    if len(value) > MAX_ARRAYS:
        raise ValueError(f"{name} has {len(value)} arrays (at most {MAX_ARRAYS})")
    files = set()
    for key, item in value.items():
        if not ARRAY_NAME.match(key):
            raise ValueError(f"{name}: bad array name {key[:40]!r}")
        check_object(f"{name}.{key}", item)
        _check_fields(f"{name}.{key}", item, {"file": check_tensor_file, "shape": check_shape})
        if len(item["shape"]) > 4:
            raise ValueError(f"{name}.{key}.shape has more than 4 axes")
        files.add(item["file"])
    if len(files) != len(value):
        raise ValueError(f"{name}: two arrays name the same file")


def check_set_row(name: str, value: Any) -> None:
    """One prompt-set row: clean, corrupted, target and foil strings."""
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object, got {type_name(value)}")
    _check_fields(name, value, dict.fromkeys(FIELDS, check_str))


def bounded_list(check: Checker, limit: int) -> Checker:
    def check_bounded(name: str, value: Any) -> None:
        if isinstance(value, list) and len(value) > limit:
            raise ValueError(f"{name} has {len(value)} items (at most {limit})")
        list_of(check)(name, value)

    return check_bounded


def check_generate_params(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object, got {type_name(value)}")
    _check_fields(name, value, {"max_new_tokens": at_most(MAX_NEW_TOKENS),
                                "temperature": check_number, "seed": check_int})
    if value["temperature"] < 0:
        raise ValueError(f"{name}.temperature must not be negative, got {value['temperature']}")


MAX_DIM = 1 << 20  # one axis of a recorded tensor
MAX_TOP_K = 10_000
MAX_NEW_TOKENS = 100_000


def check_shape(name: str, value: Any) -> None:
    list_of(check_count)(name, value)
    for size in value:
        if size > MAX_DIM:
            raise ValueError(f"{name}: axis of {size} is larger than {MAX_DIM}")


def rank(expected: int) -> Checker:
    def check_rank(name: str, value: Any) -> None:
        check_shape(name, value)
        if len(value) != expected:
            raise ValueError(f"{name} must have {expected} axis{'es' if expected > 1 else ''}, "
                             f"got {len(value)} ({value[:8]})")

    return check_rank


def at_most(limit: int, check: Checker = check_count) -> Checker:
    def check_bounded(name: str, value: Any) -> None:
        check(name, value)
        if value > limit:
            raise ValueError(f"{name} must be at most {limit}, got {value}")

    return check_bounded


def _check_fields(where: str, data: dict[str, Any], fields: dict[str, Checker]) -> None:
    for key, check in fields.items():
        if key not in data:
            raise ValueError(f"{where}: missing field {key!r}")
        check(f"{where}.{key}" if where else key, data[key])


# Required payload fields per event kind. Extra fields are allowed (written by a newer minor version).
EVENT_FIELDS: dict[str, dict[str, Checker]] = {
    "prompt": {"clean": check_str, "corrupted": check_opt_str},
    "metric": {"metric": check_metric},
    "intervention": {"action": one_of(*INTERVENTION_ACTIONS), "id": check_count},
    "vector": {"name": check_str, "file": check_tensor_file, "shape": rank(1)},
    "reference_prompts": {"prompts": list_of(check_str)},
    "run": {"prompt": check_str, "corrupted": check_opt_str, "metric": check_metric,
            "interventions": list_of(check_intervention), "top_k": at_most(MAX_TOP_K),
            "outcome": check_outcome},
    "sweep": {"sweep": one_of(*SWEEP_KINDS), "clean": check_str, "corrupt": check_str,
              "metric": check_metric, "direction": one_of(*DIRECTIONS),
              "file": check_tensor_file, "shape": rank(2), "base_metric": check_number,
              "source_metric": check_opt_number, "complete": check_bool},
    "generate": {"prompt": check_str, "corrupted": check_opt_str,
                 "interventions": list_of(check_intervention), "params": check_generate_params,
                 "token_ids": list_of(check_count), "tokens": list_of(check_str)},
    "note": {"text": check_str},
    "effect_scale": {"scale": one_of(*EFFECT_SCALES)},
    # the name a user gave feature `feature` of the SAE in `sae_folder` ("" takes it away)
    "feature_label": {"sae_folder": check_str, "feature": check_count, "label": check_str},
    # a prompt set the later set_run / set_sweep events name by this event's seq
    "prompt_set": {"name": check_str, "source": check_str,
                   "rows": bounded_list(check_set_row, MAX_SET_ROWS)},
    "set_run": {"set": check_count, "metric_kind": one_of(*SET_METRIC_KINDS),
                "prompt": one_of("clean", "corrupted"), "interventions": list_of(check_intervention),
                "values": bounded_list(check_number, MAX_SET_ROWS),
                "baseline": bounded_list(check_number, MAX_SET_ROWS)},
    "set_sweep": {"set": check_count, "metric_kind": one_of(*SET_METRIC_KINDS),
                  "direction": one_of(*DIRECTIONS), "source": one_of(*SET_SOURCES),
                  "file": check_tensor_file, "shape": rank(2), "base_metric": check_number,
                  "complete": check_bool},
    # a piece of work: the request as `request_to_dict` writes it, its outcome summary (plain JSON)
    # and the summary's named arrays in tensors/ (optional field "arrays")
    "request": {"request": check_object, "outcome": check_object, "seconds": check_number},
}
EVENT_KINDS: tuple[str, ...] = tuple(EVENT_FIELDS)


def validate_payload(kind: str, payload: dict[str, Any]) -> None:
    """Raise ValueError with a one-line reason when `payload` is not a valid `kind` event."""
    fields = EVENT_FIELDS.get(kind)
    if fields is None:
        raise ValueError(f"unknown event kind {kind!r} (known: {', '.join(EVENT_KINDS)})")
    _check_fields("", payload, fields)
    if kind == "intervention":
        action = payload["action"]
        if action in ("added", "changed"):
            if "intervention" not in payload:
                raise ValueError(f"intervention {action} needs the 'intervention' field")
            check_intervention("intervention", payload["intervention"])
        if action == "toggled":
            check_bool("enabled", payload.get("enabled"))
    if kind == "generate" and len(payload["token_ids"]) != len(payload["tokens"]):
        raise ValueError("token_ids and tokens differ in length")
    if kind == "generate" and len(payload["token_ids"]) > payload["params"]["max_new_tokens"]:
        raise ValueError("more tokens recorded than params.max_new_tokens allows")
    if kind == "vector" and payload["shape"][0] == 0:
        raise ValueError("shape: a steering vector needs at least one value")
    if kind == "sweep":
        _check_sweep_labels(payload)
    if kind == "prompt_set" and not payload["rows"]:
        raise ValueError("rows: a prompt set needs at least one row")
    if kind == "set_run" and len(payload["values"]) != len(payload["baseline"]):
        raise ValueError("values and baseline differ in length")
    if kind == "request":
        _check_request_event(payload)


def _check_request_event(payload: dict[str, Any]) -> None:
    """The request must read back, and its outcome (with the shapes of its arrays) be one its kind's
    handler can use."""
    import numpy as np

    from mechscope.requests.kinds import request_from_dict
    from mechscope.requests.registry import Summary, handler_for

    if "arrays" in payload:
        check_arrays("arrays", payload["arrays"])
    request = request_from_dict(payload["request"])
    # zero-size stand-ins of the recorded shapes: the arrays themselves are read after the line
    shapes = {name: np.broadcast_to(np.float32(0), tuple(item["shape"]))
              for name, item in payload.get("arrays", {}).items()}
    handler_for(request).check(request, Summary(payload["outcome"], shapes))


def work_kind(event: Event) -> str | None:
    """The request kind of a piece of work (a request event or an older run/sweep/... event), else None."""
    if event.kind == "request":
        return str(event["request"]["kind"])
    return LEGACY_WORK.get(event.kind)


def tensor_files(event: Event) -> dict[str, tuple[str, list[int], bool]]:
    """The tensors an event names: file -> (key in the file, shape, must be finite)."""
    if event.kind == "vector":
        return {event["file"]: ("vector", event["shape"], True)}
    if event.kind in ("sweep", "set_sweep"):
        return {event["file"]: ("values", event["shape"], False)}
    if event.kind == "request":
        return {item["file"]: ("values", item["shape"], False)
                for item in event.get("arrays", {}).values()}
    return {}


def _check_sweep_labels(payload: dict[str, Any]) -> None:
    """Row and column labels, when present, name each row and column of the matrix."""
    for key, axis in (("row_labels", 0), ("col_labels", 1)):
        if key not in payload:
            continue
        list_of(check_str)(key, payload[key])
        if len(payload[key]) != payload["shape"][axis]:
            raise ValueError(f"{key} has {len(payload[key])} labels for {payload['shape'][axis]} "
                             f"{'rows' if axis == 0 else 'columns'}")


def event_from_json(data: Any, line: int) -> Event:
    """Validate one decoded JSON line; ValueError with a one-line reason on anything malformed."""
    if not isinstance(data, dict):
        raise ValueError(f"an event must be a JSON object, got {type_name(data)}")
    for key in RESERVED:
        if key not in data:
            raise ValueError(f"missing field {key!r}")
    seq, time, kind = data["seq"], data["time"], data["kind"]
    at_most(2**53)("seq", seq)
    check_number("time", time)
    check_str("kind", kind)
    payload = {k: v for k, v in data.items() if k not in RESERVED}
    validate_payload(kind, payload)
    return Event(seq=seq, time=float(time), kind=kind, payload=payload, line=line)
