"""Interventions as frozen, JSON-serialisable data: what to change, never how."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from mechscope.engine.errors import InvalidIntervention

AblationMode = Literal["zero", "mean", "resample"]
ABLATION_MODES: tuple[str, ...] = get_args(AblationMode)
Positions = tuple[int, ...] | None


def _positions(value: Any) -> Positions:
    """Normalise a positions argument (None, an int or a sequence of ints) to a tuple."""
    if value is None:
        return None
    if isinstance(value, int):
        return (value,)
    return tuple(int(p) for p in value)


@dataclass(frozen=True)
class Place:
    """Where the `+` chooser builds a new intervention: the grid cursor's layer and head, the prompt's
    last position, the prompts and the names of the steering vectors."""

    layer: int = 0
    head: int = 0
    last: int = 0
    clean: str = ""
    corrupted: str = ""
    vectors: tuple[str, ...] = ()
    kv_group: int = 0  # query heads per key/value head (grouped-query attention shares one); 0 unknown


@dataclass(frozen=True)
class Intervention:
    """Base class. Subclasses name the `layer` they first touch (incremental recompute starts there).

    What the `+` chooser offers comes from here: `title` and `description` (a type without a title
    is not offered), `example` builds the instance its form starts from, `form_hint` the form's hint.
    """

    kind: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[Intervention]]] = {}
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    hint: ClassVar[str] = "empty positions = all"
    chooser_rank: ClassVar[int] = 100  # the chooser lists types by rank, then in registration order

    if TYPE_CHECKING:
        # Every subclass has an `enabled` dataclass field; a read-only property here tells the
        # checker so without giving the base a field (which would change subclass field order).
        @property
        def enabled(self) -> bool: ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            Intervention.registry[cls.kind] = cls

    @property
    def start_layer(self) -> int:
        """First decoder layer whose computation this intervention changes."""
        return int(getattr(self, "layer"))  # noqa: B009 - subclasses without a `layer` override this

    @property
    def label(self) -> str:
        """Short human label, e.g. `zero L9.H3`."""
        return self.kind

    @property
    def patch_source(self) -> str | None:
        """The prompt whose run this intervention copies activations from (None: it reads no other run).
        The run's result then says what that prompt's own metric is, so the effect can be normalised."""
        return None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Intervention:
        """Rebuild an intervention from `to_dict` output; ValueError on anything malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"intervention must be a JSON object, got {type(data).__name__}")
        kind = data.get("kind")
        cls = Intervention.registry.get(kind) if isinstance(kind, str) else None
        if cls is None:
            known = ", ".join(sorted(Intervention.registry))
            raise ValueError(f"unknown intervention kind {kind!r} (known: {known})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names - {"kind"}
        if unknown:
            raise ValueError(f"{kind}: unknown field(s) {sorted(unknown)}")
        try:
            return cls(**{k: v for k, v in data.items() if k != "kind"})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{kind}: {exc}") from None

    def with_enabled(self, enabled: bool) -> Intervention:
        return dataclasses.replace(self, enabled=enabled)  # type: ignore[call-arg]  # mypy sees the base's (no) fields; every subclass has `enabled`

    @classmethod
    def example(cls, place: Place) -> Intervention:
        """A sensible new instance at `place`, for the chooser's form (every type with a `title`)."""
        raise NotImplementedError(f"{cls.__name__} has no example for the chooser")

    @classmethod
    def form_hint(cls, place: Place) -> str:
        return cls.hint


def chooser_types() -> list[type[Intervention]]:
    """The types the `+` chooser offers, by `chooser_rank` (read when asked, so a type registered
    later is offered too)."""
    return sorted((cls for cls in Intervention.registry.values() if cls.title), key=lambda cls: cls.chooser_rank)


FLOAT32_MAX = 3.4028234663852886e38  # no supported model computes in a wider type


def _finite(iv: Intervention, name: str, value: Any) -> float:
    """`value` as a float that fits a float32 activation; InvalidIntervention naming `iv` otherwise."""
    number = float(value)
    if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
        object.__setattr__(iv, name, number)  # so the label shows what was given
        raise InvalidIntervention(f"{iv.label}: {name} must be a finite number within float32 range, "
                                  f"got {value!r}")
    return number


def _check_mode(mode: str) -> None:
    if mode not in ABLATION_MODES:
        raise ValueError(f"mode must be {', '.join(ABLATION_MODES[:-1])} or {ABLATION_MODES[-1]}, got {mode!r}")


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")


@dataclass(frozen=True)
class HeadAblation(Intervention):
    """Replace a query head's output (its slice of the output projection's input)."""

    kind: ClassVar[str] = "head_ablation"
    title: ClassVar[str] = "head ablation"
    chooser_rank: ClassVar[int] = 1
    description: ClassVar[str] = "zero / mean / resample one head"
    layer: int
    head: int
    mode: AblationMode = "zero"
    positions: Positions = None
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_int("layer", self.layer)
        _check_int("head", self.head)
        _check_mode(self.mode)
        object.__setattr__(self, "positions", _positions(self.positions))

    @classmethod
    def example(cls, place: Place) -> HeadAblation:
        return cls(place.layer, place.head)

    @property
    def label(self) -> str:
        return f"{self.mode} L{self.layer}.H{self.head}"


@dataclass(frozen=True)
class HeadScale(Intervention):
    """Multiply a query head's output by `factor`."""

    kind: ClassVar[str] = "head_scale"
    title: ClassVar[str] = "head scale"
    chooser_rank: ClassVar[int] = 2
    description: ClassVar[str] = "multiply one head's output"
    layer: int
    head: int
    factor: float = 1.0
    positions: Positions = None
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_int("layer", self.layer)
        _check_int("head", self.head)
        object.__setattr__(self, "factor", _finite(self, "factor", self.factor))
        object.__setattr__(self, "positions", _positions(self.positions))

    @classmethod
    def example(cls, place: Place) -> HeadScale:
        return cls(place.layer, place.head, 2.0)

    @property
    def label(self) -> str:
        return f"scale L{self.layer}.H{self.head} x{self.factor:g}"


@dataclass(frozen=True)
class ComponentAblation(Intervention):
    """Replace the whole attention or MLP output of a layer."""

    kind: ClassVar[str] = "component_ablation"
    title: ClassVar[str] = "component ablation"
    chooser_rank: ClassVar[int] = 5
    description: ClassVar[str] = "ablate a layer's attention or MLP output"
    hint: ClassVar[str] = "component attn or mlp; mode zero, mean or resample"
    layer: int
    component: Literal["attn", "mlp"] = "attn"
    mode: AblationMode = "zero"
    positions: Positions = None
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_int("layer", self.layer)
        if self.component not in ("attn", "mlp"):
            raise ValueError(f"component must be attn or mlp, got {self.component!r}")
        _check_mode(self.mode)
        object.__setattr__(self, "positions", _positions(self.positions))

    @classmethod
    def example(cls, place: Place) -> ComponentAblation:
        return cls(place.layer, "attn", "zero")

    @property
    def label(self) -> str:
        return f"{self.mode} L{self.layer}.{self.component}"


@dataclass(frozen=True)
class ActivationPatch(Intervention):
    """Copy the activation at `address` from a run on `source_prompt` into this run."""

    kind: ClassVar[str] = "activation_patch"
    title: ClassVar[str] = "activation patch"
    chooser_rank: ClassVar[int] = 3
    description: ClassVar[str] = "copy an activation from another prompt"
    hint: ClassVar[str] = "address like L3.H1, L3.attn, L3.mlp, L3.resid_pre"
    address: str
    source_prompt: str
    positions: Positions = None
    enabled: bool = True

    def __post_init__(self) -> None:
        from mechscope.engine.addresses import parse_address

        parse_address(self.address)
        if not isinstance(self.source_prompt, str):
            raise TypeError("source_prompt must be a string")
        object.__setattr__(self, "positions", _positions(self.positions))

    @property
    def start_layer(self) -> int:
        from mechscope.engine.addresses import parse_address

        return parse_address(self.address).layer

    @classmethod
    def example(cls, place: Place) -> ActivationPatch:
        return cls(f"L{place.layer}.H{place.head}", place.corrupted or place.clean)

    @property
    def patch_source(self) -> str | None:
        return self.source_prompt

    @property
    def label(self) -> str:
        return f"patch {self.address}"


@dataclass(frozen=True)
class SteeringVector(Intervention):
    """Add `coeff` times a stored vector to the residual stream entering `layer`."""

    kind: ClassVar[str] = "steering_vector"
    title: ClassVar[str] = "steering vector"
    chooser_rank: ClassVar[int] = 7
    description: ClassVar[str] = "steer the residual stream with a vector"
    layer: int
    vector_id: str
    coeff: float = 1.0
    positions: Literal["all", "last"] | tuple[int, ...] = "all"
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_int("layer", self.layer)
        object.__setattr__(self, "coeff", _finite(self, "coeff", self.coeff))
        if self.positions not in ("all", "last"):
            object.__setattr__(self, "positions", _positions(self.positions))

    @classmethod
    def example(cls, place: Place) -> SteeringVector:
        return cls(place.layer, place.vectors[-1] if place.vectors else "", 4.0)

    @classmethod
    def form_hint(cls, place: Place) -> str:
        return f"vectors: {', '.join(place.vectors)}; positions all, last or 3,4"

    @property
    def label(self) -> str:
        return f"steer L{self.layer} {self.vector_id} x{self.coeff:g}"


@dataclass(frozen=True)
class AttentionKnockout(Intervention):
    """Mask one query->key edge of a head before the softmax."""

    kind: ClassVar[str] = "attention_knockout"
    title: ClassVar[str] = "attention knockout"
    chooser_rank: ClassVar[int] = 4
    description: ClassVar[str] = "mask one query→key edge of a head"
    layer: int
    head: int
    query_pos: int
    key_pos: int
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("layer", "head", "query_pos", "key_pos"):
            _check_int(name, getattr(self, name))

    @classmethod
    def example(cls, place: Place) -> AttentionKnockout:
        return cls(place.layer, place.head, place.last, 0)

    @property
    def label(self) -> str:
        return f"knockout L{self.layer}.H{self.head} {self.query_pos}->{self.key_pos}"


@dataclass(frozen=True)
class NeuronClamp(Intervention):
    """Set one MLP hidden neuron (input of the down projection) to `value`."""

    kind: ClassVar[str] = "neuron_clamp"
    title: ClassVar[str] = "neuron clamp"
    chooser_rank: ClassVar[int] = 6
    description: ClassVar[str] = "set one MLP neuron to a value"
    layer: int
    neuron: int
    value: float = 0.0
    positions: Positions = None
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_int("layer", self.layer)
        _check_int("neuron", self.neuron)
        object.__setattr__(self, "value", _finite(self, "value", self.value))
        object.__setattr__(self, "positions", _positions(self.positions))

    @classmethod
    def example(cls, place: Place) -> NeuronClamp:
        return cls(place.layer, 0, 0.0)

    @property
    def label(self) -> str:
        return f"clamp L{self.layer}.N{self.neuron}={self.value:g}"


HeadInput = Literal["q", "k", "v"]
HEAD_INPUT_NAMES: dict[str, str] = {"q": "query", "k": "key", "v": "value"}


def kv_head_text(head: int, group: int) -> str:
    """`KV head 1, shared by H3-H5`: which key/value head query head `head` reads, when `group` > 1
    query heads share it."""
    kv = head // group
    return f"KV head {kv}, shared by H{kv * group}-H{kv * group + group - 1}"


@dataclass(frozen=True)
class HeadInputPatch(Intervention):
    """Copy one head's query, key or value (as attention reads them: after rotary embedding) at
    `positions` from a run on `source_prompt`. With grouped-query attention a key or value belongs
    to a KV head that `group` query heads share: patching it patches all of them. `group` 0 leaves
    the label without the KV head; otherwise it must be the model's (checked when compiled)."""

    kind: ClassVar[str] = "head_input_patch"
    title: ClassVar[str] = "head input patch"
    chooser_rank: ClassVar[int] = 8
    description: ClassVar[str] = "copy a head's q, k or v from another prompt"
    hint: ClassVar[str] = "which q, k or v (k and v are shared under grouped-query attention); empty positions = all"
    layer: int
    head: int
    which: HeadInput = "q"
    source_prompt: str = ""
    positions: Positions = None
    group: int = 0
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_int("layer", self.layer)
        _check_int("head", self.head)
        _check_int("group", self.group)
        if self.which not in HEAD_INPUT_NAMES:
            raise ValueError(f"which must be q, k or v, got {self.which!r}")
        if self.group < 0:
            raise ValueError(f"group must be >= 0, got {self.group}")
        if not isinstance(self.source_prompt, str):
            raise TypeError("source_prompt must be a string")
        object.__setattr__(self, "positions", _positions(self.positions))

    @classmethod
    def example(cls, place: Place) -> HeadInputPatch:
        return cls(place.layer, place.head, "q", place.corrupted or place.clean, group=place.kv_group)

    @property
    def patch_source(self) -> str | None:
        return self.source_prompt

    @property
    def label(self) -> str:
        """`patch L5.H4 key (KV head 1, shared by H3-H5)`."""
        text = f"patch L{self.layer}.H{self.head} {HEAD_INPUT_NAMES.get(self.which, self.which)}"
        if self.which != "q" and self.group > 1:
            text += f" ({kv_head_text(self.head, self.group)})"
        return text


# Every type defined above, in definition order (a new type registers itself by its `kind`).
INTERVENTION_TYPES: tuple[type[Intervention], ...] = tuple(Intervention.registry.values())


FEATURE_SITE_KINDS: tuple[str, ...] = ("resid_pre", "resid_post", "attn_out", "mlp_out")


def parse_feature_site(site: str) -> tuple[int, str]:
    """`L<k>.<kind>` (kind one of FEATURE_SITE_KINDS) as (k, kind); ValueError naming the site otherwise."""
    layer_text, dot, kind = str(site).partition(".")
    if (not dot or kind not in FEATURE_SITE_KINDS or not layer_text.startswith("L")
            or not layer_text[1:].isdigit() or len(layer_text) > 6):
        raise ValueError(f"site {site!r} is not L<layer>.{{{','.join(FEATURE_SITE_KINDS)}}}")
    return int(layer_text[1:]), kind


def sae_label(sae_id: str, width: int = 28) -> str:
    """An SAE as labels name it: its attached name or its folder's last part, the middle elided past
    `width` characters (the names `features train` gives repeat the site a label states anyway)."""
    name = sae_id.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or sae_id
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return f"{name[:head]}…{name[len(name) - (width - 1 - head):]}"


@dataclass(frozen=True)
class _FeatureEdit(Intervention):
    """Shared fields of the feature edits: which SAE (attached to the engine by name, or the folder it
    is read from) at `site`, which feature."""

    site: str
    sae_id: str
    feature: int

    def _check_feature_fields(self) -> None:
        parse_feature_site(self.site)
        if not isinstance(self.sae_id, str) or not self.sae_id:
            raise ValueError("sae_id must be a non-empty string")
        _check_int("feature", self.feature)
        if self.feature < 0:
            raise ValueError(f"feature must be >= 0, got {self.feature}")

    @property
    def start_layer(self) -> int:
        return parse_feature_site(self.site)[0]

    @property
    def sae_name(self) -> str:
        return sae_label(self.sae_id)


@dataclass(frozen=True)
class FeatureAblation(_FeatureEdit):
    """Set an SAE feature's activation to 0, keeping the SAE's reconstruction error."""

    kind: ClassVar[str] = "feature_ablation"
    positions: Positions = None
    enabled: bool = True

    def __post_init__(self) -> None:
        self._check_feature_fields()
        object.__setattr__(self, "positions", _positions(self.positions))

    @property
    def label(self) -> str:
        return f"ablate {self.site} {self.sae_name}#{self.feature}"


@dataclass(frozen=True)
class FeatureClamp(_FeatureEdit):
    """Set an SAE feature's activation to `value`, keeping the SAE's reconstruction error."""

    kind: ClassVar[str] = "feature_clamp"
    value: float = 0.0
    positions: Positions = None
    enabled: bool = True

    def __post_init__(self) -> None:
        self._check_feature_fields()
        object.__setattr__(self, "value", _finite(self, "value", self.value))
        object.__setattr__(self, "positions", _positions(self.positions))

    @property
    def label(self) -> str:
        return f"clamp {self.site} {self.sae_name}#{self.feature}={self.value:g}"


@dataclass(frozen=True)
class FeatureSteer(_FeatureEdit):
    """Add `coeff` to an SAE feature's activation (adds coeff x its decoder row), keeping the error term."""

    kind: ClassVar[str] = "feature_steer"
    coeff: float = 1.0
    positions: Positions = None
    enabled: bool = True

    def __post_init__(self) -> None:
        self._check_feature_fields()
        object.__setattr__(self, "coeff", _finite(self, "coeff", self.coeff))
        object.__setattr__(self, "positions", _positions(self.positions))

    @property
    def label(self) -> str:
        return f"steer {self.site} {self.sae_name}#{self.feature} x{self.coeff:g}"


# Feature edits need an SAE attached to the engine, so the every-kind tests over INTERVENTION_TYPES
# (random stacks against hand-written hooks) do not build them; tests/features covers them.
FEATURE_INTERVENTION_TYPES: tuple[type[Intervention], ...] = (FeatureAblation, FeatureClamp, FeatureSteer)
