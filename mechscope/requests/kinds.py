"""The request vocabulary: every piece of engine work as a frozen request carrying all its inputs, and its outcome.

A request holds everything the engine needs (prompts, metric, interventions, views, options), so
what a session records from an outcome's request is exactly what ran. Requests and outcomes are
JSON-serialisable (`request_to_dict` / `request_from_dict`) so they can travel to a server.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from mechscope.engine.addresses import parse_head, parse_receiver
from mechscope.engine.interventions import Intervention
from mechscope.engine.metric import Metric, SetMetricKind
from mechscope.engine.prompt_sets import DEFAULT_SHOTS, PromptSet, PromptSetError
from mechscope.engine.results import Direction, EstimateMethod, HeadInputKind, SweepKind
from mechscope.engine.views import Views
from mechscope.requests.field_types import check_typed


@dataclass(frozen=True)
class RunRequest:
    """One forward with interventions and views (`Engine.run`)."""

    kind: ClassVar[str] = "run"
    prompt: str
    corrupted: str | None = None
    metric: Metric | None = None
    interventions: tuple[Intervention, ...] = ()
    views: Views = field(default_factory=Views)
    top_k: int = 10


@dataclass(frozen=True)
class SweepRequest:
    """A patching sweep (`Engine.sweep`): every cell patched from the source run into the base run."""

    kind: ClassVar[str] = "sweep"
    sweep_kind: SweepKind
    clean: str
    corrupt: str
    metric: Metric
    direction: Direction = "noising"
    interventions: tuple[Intervention, ...] = ()  # the sweep runs on the model with these applied
    # what the head sweep patches of each head: its output, or its query / key / value (a KV head's,
    # shared by its query heads, under grouped-query attention)
    head_input: HeadInputKind = "output"


@dataclass(frozen=True)
class GenerateRequest:
    """Generation with interventions active at every step (`Engine.generate`)."""

    kind: ClassVar[str] = "generate"
    prompt: str
    corrupted: str | None = None
    interventions: tuple[Intervention, ...] = ()
    max_new_tokens: int = 20
    temperature: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class BuildVectorRequest:
    """A steering vector from contrastive prompts (`Engine.build_steering_vector`)."""

    kind: ClassVar[str] = "build_vector"
    name: str
    layer: int
    positive: tuple[str, ...]
    negative: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class AddVectorRequest:
    """A named steering vector given as values (loaded from a file, or re-sent to a server)."""

    kind: ClassVar[str] = "add_vector"
    name: str
    vector: np.ndarray  # [d_model] float32


@dataclass(frozen=True)
class ValidateRequest:
    """Check interventions against a prompt without a forward pass (`Engine.validate`)."""

    kind: ClassVar[str] = "validate"
    prompt: str
    corrupted: str | None = None
    interventions: tuple[Intervention, ...] = ()


@dataclass(frozen=True)
class ReferencePromptsRequest:
    """Set the prompts mean ablation averages over (`Engine.set_reference_prompts`)."""

    kind: ClassVar[str] = "reference_prompts"
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class RunSetRequest:
    """The metric on every row of a prompt set, with and without interventions (`Engine.run_set`)."""

    kind: ClassVar[str] = "run_set"
    pset: PromptSet
    metric_kind: SetMetricKind = "logit_diff"
    interventions: tuple[Intervention, ...] = ()
    prompt: Literal["clean", "corrupted"] = "clean"
    # what mean ablation averages over: the set's clean prompts, or its corrupted ones (the IOI
    # paper's "ABC" distribution: the same templates with three unrelated names)
    means: Literal["clean", "corrupted"] = "clean"


@dataclass(frozen=True)
class SweepSetRequest:
    """Head patching over every row of a prompt set, mean and spread per cell (`Engine.sweep_set`)."""

    kind: ClassVar[str] = "sweep_set"
    pset: PromptSet
    metric_kind: SetMetricKind = "logit_diff"
    direction: Direction = "noising"
    source: Literal["prompts", "mean"] = "prompts"


AUTO_VERIFY = -1  # EstimateRequest.verify_top_k: the estimate's own uncertainty picks the heads


@dataclass(frozen=True)
class EstimateRequest:
    """An attribution estimate of head patching over a set, then exact patches of the likely top heads
    in one batched pass (`Engine.estimate_and_verify`). `verify_top_k`: k > 0 verifies the estimate's
    top k by magnitude; AUTO_VERIFY (-1) lets the estimate's uncertainty choose (the aim: the exact
    top 10 among them); 0 verifies nothing."""

    kind: ClassVar[str] = "estimate"
    pset: PromptSet
    method: EstimateMethod = "atp"
    steps: int = 5
    metric_kind: SetMetricKind = "logit_diff"
    direction: Direction = "noising"
    verify_top_k: int = 0


@dataclass(frozen=True)
class TemplateSetRequest:
    """A prompt set built from a template ("ioi", "capitals", "induction", or an in-context task
    "antonyms", "country-capital", "uppercase" with `shots` examples per prompt) with the engine's tokenizer."""

    kind: ClassVar[str] = "template_set"
    template: str
    count: int = 20
    seed: int = 0
    shots: int = DEFAULT_SHOTS


@dataclass(frozen=True)
class DetectHeadsRequest:
    """The head-detector grids of the loaded model (`Engine.detect_heads`, cached on disk)."""

    kind: ClassVar[str] = "detect_heads"


@dataclass(frozen=True)
class MassiveRequest:
    """Massive residual activations per layer over a set's clean prompts (`Engine.massive_activations`)."""

    kind: ClassVar[str] = "massive"
    pset: PromptSet
    ratio: float = 100.0


@dataclass(frozen=True)
class PathPatchRequest:
    """Path patching (`Engine.path_patch`): the change of `sender` (`L<l>.H<h>`) from the source run
    reaches only `receivers` (`L<l>.H<h>.q|k|v`: a head's query / key / value input, `L<l>.mlp`: an
    MLP's input, `resid_final`: the final residual at the metric's position); everything else sees
    the base run. noising: base clean, source corrupt; denoising: the reverse. With every
    downstream component as receivers it is activation patching of the sender; with none, zero."""

    kind: ClassVar[str] = "path_patch"
    sender: str
    receivers: tuple[str, ...]
    clean: str
    corrupt: str
    metric: Metric
    direction: Direction = "noising"
    interventions: tuple[Intervention, ...] = ()  # every run is on the model with these applied

    def __post_init__(self) -> None:
        parse_head(self.sender)
        object.__setattr__(self, "receivers", tuple(self.receivers))
        for receiver in self.receivers:
            parse_receiver(receiver)


@dataclass(frozen=True)
class PathSweepRequest:
    """Senders → this receiver (`Engine.path_sweep`): every earlier head's path effect into one
    head's query, key or value (`L<l>.H<h>.q|k|v`), a [layer, head] grid."""

    kind: ClassVar[str] = "path_sweep"
    receiver: str
    clean: str
    corrupt: str
    metric: Metric
    direction: Direction = "noising"
    interventions: tuple[Intervention, ...] = ()

    @property
    def sweep_kind(self) -> SweepKind:
        """The grid it fills: a head sweep's [layer, head]."""
        return "head"

    def __post_init__(self) -> None:
        if parse_receiver(self.receiver).kind not in ("q", "k", "v"):
            raise ValueError(f"the receiver of a path sweep is a head's query, key or value "
                             f"(L<layer>.H<head>.q, .k or .v), got {self.receiver!r}")


@dataclass(frozen=True)
class FeatureActivationsRequest:
    """The strongest features of the SAE in `sae_folder` (SAELens, sparsify or Gemma Scope layout, on
    the engine's machine) at every token of `prompt` (`Engine.feature_activations`). `site` names where
    the SAE reads when its folder does not say. The outcome carries the SAE's digest, so a replay on a
    changed file says so."""

    kind: ClassVar[str] = "feature_activations"
    prompt: str
    sae_folder: str
    site: str | None = None
    top_k: int = 10


@dataclass(frozen=True)
class FeatureCardRequest:
    """One feature's card from the SAE in `sae_folder` (`Engine.feature_card`): density and `k` top
    contexts from the index stored beside the SAE (`mechscope features index`), and the `k` tokens its
    decoder direction promotes and suppresses. The outcome carries the SAE's digest."""

    kind: ClassVar[str] = "feature_card"
    sae_folder: str
    feature: int
    site: str | None = None
    k: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.sae_folder, str) or not self.sae_folder.strip():
            raise ValueError("sae_folder must be a non-empty string")
        for name in ("feature", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.feature < 0:
            raise ValueError(f"feature must be >= 0, got {self.feature}")
        if self.site is not None and not isinstance(self.site, str):
            raise ValueError("site must be a string or null")


@dataclass(frozen=True)
class FeatureAttributionRequest:
    """Attribution to the SAE features in `sae_folder` on `prompt` (`Engine.feature_attribution`):
    every active (position, feature) ranked by its attribution-patching estimate of the change in
    `metric` when ablated, the SAE's error term as its own node, the top `verify` of the `top_n`
    listed ablated exactly (error kept), and each one's direct effect through the frozen final norm.
    Runs on the model with `interventions` (resample ablations take `corrupted` as their source). The
    first token (the attention sink, which SAEs are trained without) is a candidate only with
    `include_first`."""

    kind: ClassVar[str] = "feature_attribution"
    prompt: str
    sae_folder: str
    site: str | None
    metric: Metric
    interventions: tuple[Intervention, ...] = ()
    top_n: int = 20
    verify: int = 10
    corrupted: str | None = None
    include_first: bool = False


@dataclass(frozen=True)
class FunctionVectorRequest:
    """A function vector from an in-context set (`Engine.function_vector`): each head's average
    indirect effect, the top heads' summed mean output registered as the steering vector `name`, and
    zero-shot accuracy with and without `coeff` times it added at `layer`."""

    kind: ClassVar[str] = "function_vector"
    pset: PromptSet
    layer: int
    top_heads: int = 10
    coeff: float = 1.0
    name: str = "fv"


@dataclass(frozen=True)
class SetAttentionRequest:
    """One head's attention between the set's roles (IO, S1, S2, END for IOI), mean and spread over
    the set (`Engine.set_attention`)."""

    kind: ClassVar[str] = "set_attention"
    pset: PromptSet
    layer: int
    head: int


@dataclass(frozen=True)
class RoleHeadsRequest:
    """Name-mover and S-inhibition grids over an IOI set (`Engine.detect_role_heads`; not cached:
    they depend on the set)."""

    kind: ClassVar[str] = "role_heads"
    pset: PromptSet


Request = (RunRequest | SweepRequest | GenerateRequest | BuildVectorRequest | AddVectorRequest
           | ValidateRequest | ReferencePromptsRequest | RunSetRequest | SweepSetRequest
           | EstimateRequest | DetectHeadsRequest | MassiveRequest | TemplateSetRequest
           | PathPatchRequest | PathSweepRequest
           | FeatureActivationsRequest | FeatureAttributionRequest | FunctionVectorRequest | SetAttentionRequest
           | RoleHeadsRequest | FeatureCardRequest)

REQUEST_TYPES: dict[str, type] = {
    cls.kind: cls for cls in (RunRequest, SweepRequest, GenerateRequest, BuildVectorRequest,
                              AddVectorRequest, ValidateRequest, ReferencePromptsRequest,
                              RunSetRequest, SweepSetRequest, EstimateRequest, DetectHeadsRequest,
                              MassiveRequest, TemplateSetRequest, PathPatchRequest, PathSweepRequest,
                              FeatureActivationsRequest, FeatureAttributionRequest, FunctionVectorRequest,
                              SetAttentionRequest, RoleHeadsRequest, FeatureCardRequest)
}
SET_REQUESTS: tuple[type, ...] = (RunSetRequest, SweepSetRequest, EstimateRequest, DetectHeadsRequest,
                                  MassiveRequest, TemplateSetRequest,
                                  FunctionVectorRequest, SetAttentionRequest, RoleHeadsRequest)


@dataclass(frozen=True, eq=False)
class Outcome:
    """What a request produced: `result` (RunResult, SweepResult, list[GeneratedToken], an array or
    None) or a one-line `error`; `cancelled` when it was stopped. Always carries its request."""

    request: Request
    result: Any = None
    error: str | None = None
    cancelled: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled


def request_to_dict(request: Request) -> dict[str, Any]:
    """A JSON-ready dict with a `kind` field; interventions, metric and views as their own dicts."""
    data: dict[str, Any] = {"kind": request.kind}
    for f in dataclasses.fields(request):
        value = getattr(request, f.name)
        if isinstance(value, Metric):
            value = value.to_dict()
        elif isinstance(value, Views):
            value = dataclasses.asdict(value)
            value["attention"] = list(value["attention"])
        elif isinstance(value, np.ndarray):
            value = [float(v) for v in value.reshape(-1)]
        elif isinstance(value, PromptSet):
            value = value.to_dict()
        elif isinstance(value, tuple):
            value = [v.to_dict() if isinstance(v, Intervention) else v for v in value]
        data[f.name] = value
    return data


def request_from_dict(data: Any) -> Request:
    """Rebuild a request from `request_to_dict` output; ValueError naming the field on bad input."""
    if not isinstance(data, dict):
        raise ValueError(f"request must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    cls = REQUEST_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown request kind {kind!r} (known: {', '.join(sorted(REQUEST_TYPES))})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields) - {"kind"}
    if unknown:
        raise ValueError(f"{kind}: unknown field(s) {sorted(unknown)}")
    values = {name: _field_from_json(str(kind), name, value) for name, value in data.items()
              if name != "kind"}
    try:
        request = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{kind}: {exc}") from None
    check_typed(str(kind), request, cls)
    return request


def _views_from_json(value: Any) -> Views:
    if not isinstance(value, dict):
        raise ValueError("views must be a JSON object")
    try:
        return Views(**value)
    except TypeError as exc:
        raise ValueError(f"views: {exc}") from None


def _interventions_from_json(value: Any) -> tuple[Intervention, ...]:
    if not isinstance(value, list):
        raise ValueError("interventions must be a list")
    return tuple(Intervention.from_dict(v) for v in value)


def _vector_from_json(value: Any) -> np.ndarray:
    if not isinstance(value, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError("vector must be a list of numbers")
    return np.asarray(value, dtype=np.float32)


def _pset_from_json(value: Any) -> PromptSet:
    try:
        return PromptSet.from_dict(value)
    except PromptSetError as exc:
        raise ValueError(f"pset: {exc}") from None


def _strings_from_json(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


_FIELD_READERS: dict[str, Any] = {
    "views": _views_from_json,
    "interventions": _interventions_from_json,
    "vector": _vector_from_json,
    "pset": _pset_from_json,
    "positive": _strings_from_json,
    "negative": _strings_from_json,
    "prompts": _strings_from_json,
    "receivers": _strings_from_json,
}


def _field_from_json(kind: str, name: str, value: Any) -> Any:
    """One request field from its JSON form (a plain value passes through); ValueError names it."""
    if name == "metric":
        return None if value is None else Metric.from_dict(value)
    reader = _FIELD_READERS.get(name)
    if reader is None:
        return value
    try:
        return reader(value)
    except ValueError as exc:
        message = str(exc)
        prefix = "" if message.startswith(name) or name in ("views", "pset") else f"{name} "
        raise ValueError(f"{kind}: {prefix}{message}") from None
