"""Interventions compiled to site edits: one function per intervention type, registered in `COMPILERS`.

A compile function checks its intervention against the model and prompt (ranges, lengths, names)
and, unless it is a dry run, records `SiteEdit`s: plain data (a site, positions, set / scale / add and
a value) that three appliers read — hooks on the native engine (`prompt_edits.native_hooks`), prompt-set runs
(`set_edits`) and the nnsight trace plan (`backends.plan`). Values it needs (reference means, source
activations, steering vectors on the right device) come from the `Context`, which each of those
supplies. Adding an intervention type: its dataclass in `interventions.py`, a `@compiles(Type)`
function here, and a test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeVar, cast, overload

import numpy as np
import torch

from mechscope.engine.adapters import Adapter
from mechscope.engine.addresses import parse_address
from mechscope.engine.errors import InterventionError, PromptError
from mechscope.engine.hooks import Hook
from mechscope.engine.interventions import (
    ActivationPatch,
    AttentionKnockout,
    ComponentAblation,
    HeadAblation,
    HeadInputPatch,
    HeadScale,
    Intervention,
    NeuronClamp,
    SteeringVector,
)
from mechscope.engine.passes import Passes
from mechscope.engine.placement import execution_device
from mechscope.engine.sites import SiteKind

SiteOp = Literal["set", "scale", "add"]
EditPositions = list[int] | Literal["last"] | None
MeanSite = Literal["heads", "attn", "mlp"]
SourceSite = Literal["heads", "attn", "mlp", "resid_pre", "resid_post"]
RESID_SITES: tuple[SiteKind, ...] = ("resid_pre", "resid_post")
QKVSite = Literal["q", "k", "v"]
QKV_SITES: tuple[QKVSite, ...] = ("q", "k", "v")


@dataclass(frozen=True)
class SiteEdit:
    """One change to one activation, as plain data.

    site / layer: where (see `Site`; "q", "k", "v": the attention function's query, key or value,
    [batch, head, pos, d_head]); index: the head of a "heads" site, the neuron of a "neurons"
    site, the query head of "q", the KV head of "k" / "v", None for the whole vector. positions:
    prompt positions (a negative one counts from the end), None for every position, "last" for the
    last wherever the sequence ends. op: set (value
    replaces), scale (multiplies) or add. value: a number, a tensor broadcast over the positions
    ([d], [head, d_head]) or rows from `Context.source`, aligned with the positions it returned.
    """

    site: SiteKind | QKVSite
    layer: int
    op: SiteOp
    positions: EditPositions
    value: torch.Tensor | float
    index: int | None = None


@dataclass(frozen=True)
class HookEdit:
    """Hooks an intervention type builds itself (feature edits): applied by the native engine only."""

    layer: int
    hooks: list[Hook]


@dataclass
class Edits:
    """What a list of interventions changes, and what attribution needs to know about them.

    start: the first layer they touch (layers below reuse the clean pass).
    records: site edits and own hooks, in the order the interventions were compiled.
    hooks: the native engine's hooks applying `records` (filled by `compile_edits`).
    knockouts: layer -> attention edges (head, query, key, rows) to mask.
    resid_deltas: layer -> what edits writing the residual stream directly added there
      ([batch, pos, d_model] each, filled in during the pass).
    replaced: (layer, "attn" | "mlp") -> positions whose whole output an edit replaced (None: all).
    """

    start: int
    records: list[SiteEdit | HookEdit] = field(default_factory=list)
    hooks: list[Hook] = field(default_factory=list)
    knockouts: dict[int, list] = field(default_factory=dict)
    resid_deltas: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    replaced: dict[tuple[int, str], list[int] | None] = field(default_factory=dict)

    def edit(self, site: SiteKind | QKVSite, layer: int, op: SiteOp, positions: EditPositions,
             value: torch.Tensor | float, index: int | None = None) -> None:
        """Record one site edit."""
        self.start = min(self.start, layer)
        self.records.append(SiteEdit(site, layer, op, positions, value, index))

    def add(self, layer: int, hooks: list[Hook]) -> None:
        """Record hooks an intervention type builds itself (its context must allow them:
        `Context.hook_passes`)."""
        self.start = min(self.start, layer)
        self.records.append(HookEdit(layer, hooks))

    @property
    def site_edits(self) -> list[SiteEdit]:
        return [record for record in self.records if isinstance(record, SiteEdit)]

    @property
    def own_hooks(self) -> bool:
        return any(isinstance(record, HookEdit) for record in self.records)

    def knock(self, layer: int, head: int, query: int, key: int) -> None:
        self.knockouts.setdefault(layer, []).append((head, query, key, None))
        self.start = min(self.start, layer)

    def resid_delta(self, layer: int) -> list[torch.Tensor]:
        return self.resid_deltas.setdefault(layer, [])

    def replace_whole(self, layer: int, component: str, positions: EditPositions) -> None:
        key = (layer, component)
        listed = None if positions is None or positions == "last" else list(positions)
        if key in self.replaced:
            before = self.replaced[key]
            listed = None if before is None or listed is None else sorted({*before, *listed})
        self.replaced[key] = listed

    def whole_layer_replaced(self, layer: int, component: str, position: int) -> bool:
        """Whether `component`'s output of `layer` at `position` was replaced as a whole."""
        key = (layer, component)
        if key not in self.replaced:
            return False
        positions = self.replaced[key]
        return positions is None or position in positions


class Context:
    """What a compile function may read: the model, the length of what it edits, the values it needs.

    This base checks against one prompt of `n_pos` tokens; a context names how its refusals read
    (`where`: "over a prompt set") and supplies reference means, source activations and tensors on
    the right device. `prompt_edits.PromptContext` is one prompt on the native engine; prompt sets
    (`set_edits.SetContext`) and the nnsight plan (`backends.plan.TraceContext`) bring their own.
    """

    where: ClassVar[str] = ""
    knockouts: ClassVar[bool] = True  # whether attention edges can be masked here

    def __init__(self, adapter: Adapter, dtype: torch.dtype, n_pos: int, corrupted: str | None,
                 vectors: Mapping[str, np.ndarray], dry_run: bool) -> None:
        self.adapter = adapter
        self.dtype = dtype
        self.n_pos = n_pos
        self.corrupted = corrupted
        self.vectors = vectors
        self.dry_run = dry_run
        self.what = ""
        self.kind = ""

    def fail(self, message: str) -> InterventionError:
        return InterventionError(f"{self.what}: {message}")

    def refuse(self) -> InterventionError:
        """The one-line refusal of a kind this context cannot apply."""
        return self.fail(f"{self.kind} is not supported {self.where}")

    def check_layer(self, layer: int, head: int | None = None) -> None:
        a = self.adapter
        if not 0 <= layer < a.n_layers:
            raise self.fail(f"layer {layer} is out of range 0..{a.n_layers - 1}")
        if head is not None and not 0 <= head < a.n_heads:
            raise self.fail(f"head {head} is out of range 0..{a.n_heads - 1}")

    @overload
    def positions(self, positions: None, n_pos: int | None = None, suffix: str = "") -> None: ...

    @overload
    def positions(self, positions: Iterable[int], n_pos: int | None = None, suffix: str = "") -> list[int]: ...

    def positions(self, positions: Iterable[int] | None, n_pos: int | None = None,
                  suffix: str = "") -> list[int] | None:
        """Positions made non-negative; None (every position) stays None."""
        if positions is None:
            return None
        n_pos = self.n_pos if n_pos is None else n_pos
        out = []
        for p in positions:
            if not -n_pos <= p < n_pos:
                raise InterventionError(f"{self.what}{suffix}: position {p} is outside the prompt ({n_pos} tokens)")
            out.append(p % n_pos)
        return out

    def source(self, prompt: str, site: SourceSite, layer: int,
               positions: Iterable[int] | None) -> tuple[torch.Tensor | None, EditPositions]:
        """The activation of `site` at `layer` on `prompt` (None in a dry run), as rows [1, n, ...]
        aligned with the destination positions returned beside it (explicit, so generation can
        grow the sequence past the source's length)."""
        destination, src_positions = self.source_positions(prompt, positions)
        rows = None if self.dry_run else self.source_rows(prompt, site, layer, src_positions)
        return rows, destination

    def source_positions(self, prompt: str, positions: Iterable[int] | None) -> tuple[list[int], list[int]]:
        """(destination, source) positions of a patch from `prompt`: all of them when `positions` is
        None, which needs the two prompts to have as many tokens."""
        ids_len = self.prompt_length(prompt)
        if positions is None and ids_len != self.n_pos:
            raise self.fail(
                f"the source prompt has {ids_len} tokens and this prompt {self.n_pos}; "
                "give explicit positions to patch prompts of different lengths")
        destination = self.positions(positions)
        src_positions = self.positions(range(self.n_pos) if positions is None else positions, ids_len,
                                       " (source)")
        return (destination if destination is not None else list(range(self.n_pos))), src_positions

    def source_inputs(self, prompt: str, which: QKVSite, layer: int,
                      positions: Iterable[int] | None) -> tuple[torch.Tensor | None, list[int]]:
        """`source` for an attention input: rows [1, head, n, d_head] of the query ("q") or the
        key / value ("k" / "v", KV heads) at `layer` on `prompt`, and the destination positions."""
        destination, src_positions = self.source_positions(prompt, positions)
        rows = None if self.dry_run else self.input_rows(prompt, which, layer, src_positions)
        return rows, destination

    def input_rows(self, prompt: str, which: QKVSite, layer: int, positions: list[int]) -> torch.Tensor:
        """[1, head, len(positions), d_head] attention inputs `which` at `layer` on `prompt`."""
        raise self.refuse()

    def resample(self, site: SourceSite, layer: int,
                 positions: Iterable[int] | None) -> tuple[torch.Tensor | None, EditPositions]:
        """`source` on the corrupted prompt."""
        if not self.corrupted:
            raise self.fail("resample ablation needs a corrupted prompt")
        return self.source(self.corrupted, site, layer, positions)

    def prompt_length(self, prompt: str) -> int:
        """The number of tokens of a source prompt."""
        raise self.refuse()

    def source_rows(self, prompt: str, site: SourceSite, layer: int, positions: list[int]) -> torch.Tensor:
        """[1, len(positions), ...] activations of `site` at `layer` on `prompt` ([.., head, d_head] for heads)."""
        raise self.refuse()

    def mean(self, site: MeanSite, layer: int) -> torch.Tensor:
        """The mean-ablation value of `site` at `layer`: [head, d_head] for heads, [d_model] otherwise."""
        raise self.refuse()

    def layer_tensor(self, array: np.ndarray, layer: int) -> torch.Tensor:
        """`array` in the model's dtype, where `layer` computes."""
        return torch.as_tensor(array, device=execution_device(self.adapter.layers[layer]), dtype=self.dtype)

    def hook_passes(self) -> Passes:
        """The native engine's passes, for a type that edits with its own hooks (`Edits.add`): only
        a single-prompt native run has them; elsewhere the type is refused."""
        raise self.refuse()

    def fits_dtype(self, name: str, value: float) -> None:
        """Refuse a finite number the model's dtype would turn into infinity (float16: past 65504)."""
        limit = torch.finfo(self.dtype).max
        if abs(value) > limit:
            raise self.fail(f"{name} {value:g} overflows the model's {str(self.dtype).removeprefix('torch.')}"
                            f" (largest {limit:g})")


Compiler = Callable[[Intervention, Context, Edits], None]
COMPILERS: dict[type[Intervention], Compiler] = {}
IV = TypeVar("IV", bound=Intervention)


def compiles(kind: type[IV]) -> Callable[[Callable[[IV, Context, Edits], None]],
                                         Callable[[IV, Context, Edits], None]]:
    """Register the compile function of an intervention type."""
    def register(fn: Callable[[IV, Context, Edits], None]) -> Callable[[IV, Context, Edits], None]:
        # compile_with looks the function up by the intervention's exact type, so it only ever
        # receives a `kind`; the table itself cannot express that pairing.
        COMPILERS[kind] = cast(Compiler, fn)
        return fn

    return register


def compile_with(context: Context, interventions: Iterable[Intervention]) -> Edits:
    """The edits of `interventions` (enabled ones only) in `context`; InterventionError naming the
    first one that does not fit or that the context cannot apply."""
    edits = Edits(start=context.adapter.n_layers)
    for iv in interventions:
        if not iv.enabled:
            continue
        context.what, context.kind = iv.label, iv.kind
        compile_one = COMPILERS.get(type(iv))
        if compile_one is None:
            raise context.fail(f"unsupported intervention type {type(iv).__name__}")
        try:
            compile_one(iv, context, edits)
        except (PromptError, ValueError) as exc:
            raise context.fail(str(exc)) from None
        if edits.knockouts and not context.knockouts:
            raise context.refuse()
    return edits


# ---------------------------------------------------------------- one compile function per type


def _ablation_value(mode: str, site: MeanSite, layer: int, ctx: Context,
                    rows: torch.Tensor | None) -> torch.Tensor | float:
    """What zero / mean / resample ablation writes at `site` (rows: the resample source)."""
    if mode == "zero":
        return 0.0
    if mode == "mean":
        return ctx.mean(site, layer)
    assert rows is not None  # resample, not a dry run
    return rows


@compiles(HeadAblation)
def _head_ablation(iv: HeadAblation, ctx: Context, edits: Edits) -> None:
    ctx.check_layer(iv.layer, iv.head)
    positions: EditPositions = ctx.positions(iv.positions)
    rows = None
    if iv.mode == "resample":
        rows, positions = ctx.resample("heads", iv.layer, iv.positions)
    if ctx.dry_run:
        return
    value = _ablation_value(iv.mode, "heads", iv.layer, ctx, rows)
    if isinstance(value, torch.Tensor):
        value = value[..., iv.head, :]  # [d_head] of a mean, [batch, pos, d_head] of rows
    edits.edit("heads", iv.layer, "set", positions, value, iv.head)


@compiles(HeadScale)
def _head_scale(iv: HeadScale, ctx: Context, edits: Edits) -> None:
    ctx.check_layer(iv.layer, iv.head)
    positions = ctx.positions(iv.positions)
    ctx.fits_dtype("factor", iv.factor)
    if not ctx.dry_run:
        edits.edit("heads", iv.layer, "scale", positions, iv.factor, iv.head)


@compiles(ComponentAblation)
def _component_ablation(iv: ComponentAblation, ctx: Context, edits: Edits) -> None:
    ctx.check_layer(iv.layer)
    positions: EditPositions = ctx.positions(iv.positions)
    rows = None
    if iv.mode == "resample":
        rows, positions = ctx.resample(iv.component, iv.layer, iv.positions)
    if ctx.dry_run:
        return
    edits.replace_whole(iv.layer, iv.component, positions)
    edits.edit(iv.component, iv.layer, "set", positions, _ablation_value(iv.mode, iv.component, iv.layer, ctx, rows))


@compiles(ActivationPatch)
def _activation_patch(iv: ActivationPatch, ctx: Context, edits: Edits) -> None:
    addr = parse_address(iv.address)
    ctx.check_layer(addr.layer, addr.head)
    ctx.positions(iv.positions)
    site: SourceSite
    if addr.site == "head":
        site = "heads"
    elif addr.site in ("attn", "mlp", "resid_post"):
        site = cast(SourceSite, addr.site)
    else:  # resid_pre, embed
        site = "resid_pre"
    rows, positions = ctx.source(iv.source_prompt, site, addr.layer, iv.positions)
    if ctx.dry_run:
        return
    assert rows is not None  # not a dry run
    if site == "heads":
        edits.edit("heads", addr.layer, "set", positions, rows[..., addr.head, :], addr.head)
        return
    if site in ("attn", "mlp"):
        edits.replace_whole(addr.layer, site, positions)
    edits.edit(site, addr.layer, "set", positions, rows)


@compiles(HeadInputPatch)
def _head_input_patch(iv: HeadInputPatch, ctx: Context, edits: Edits) -> None:
    ctx.check_layer(iv.layer, iv.head)
    a = ctx.adapter
    group = max(a.n_heads // a.n_kv_heads, 1)
    if iv.group not in (0, group):
        raise ctx.fail(f"group {iv.group} is not the model's {group} query heads per KV head")
    rows, positions = ctx.source_inputs(iv.source_prompt, iv.which, iv.layer, iv.positions)
    if ctx.dry_run:
        return
    assert rows is not None  # not a dry run
    index = iv.head if iv.which == "q" else iv.head // group
    edits.edit(iv.which, iv.layer, "set", positions, rows[:, index], index)  # value [1, n, d_head]


@compiles(SteeringVector)
def _steering_vector(iv: SteeringVector, ctx: Context, edits: Edits) -> None:
    ctx.check_layer(iv.layer)
    if iv.vector_id not in ctx.vectors:
        known = ", ".join(sorted(ctx.vectors)) or "none"
        raise ctx.fail(f"no steering vector named {iv.vector_id!r} (known: {known})")
    vector = ctx.vectors[iv.vector_id]
    d_model = ctx.adapter.d_model
    if vector.shape[0] != d_model:
        raise ctx.fail(f"vector width {vector.shape[0]} != d_model {d_model}")
    positions = iv.positions
    if not isinstance(positions, str):  # "all" / "last" are the only strings __post_init__ keeps
        ctx.positions(positions)
    ctx.fits_dtype("coeff", iv.coeff)
    peak = float(np.abs(vector).max(initial=0.0)) * abs(iv.coeff)
    if peak > torch.finfo(ctx.dtype).max:
        raise ctx.fail(f"coeff {iv.coeff:g} times the vector's largest entry overflows the model's dtype")
    if ctx.dry_run:
        return
    delta = ctx.layer_tensor(vector, iv.layer) * iv.coeff  # [d_model]
    # explicit positions stay as given: a negative one counts from the end of a growing sequence
    where: EditPositions = None if positions == "all" else "last" if positions == "last" else list(positions)
    edits.edit("resid_pre", iv.layer, "add", where, delta)


@compiles(AttentionKnockout)
def _attention_knockout(iv: AttentionKnockout, ctx: Context, edits: Edits) -> None:
    if not ctx.knockouts:
        raise ctx.refuse()
    ctx.check_layer(iv.layer, iv.head)
    q, k = ctx.positions((iv.query_pos, iv.key_pos))
    if k > q:
        raise ctx.fail(f"key position {k} is after query position {q} (causal)")
    if q == 0:
        raise ctx.fail("the first token attends only to itself; it cannot be knocked out")
    row = {edge[2] for edge in edits.knockouts.get(iv.layer, []) if edge[:2] == (iv.head, q)} | {k}
    if len(row) == q + 1:
        raise ctx.fail(f"this would knock out every key query {q} can attend to; keep at least one")
    edits.knock(iv.layer, iv.head, q, k)


@compiles(NeuronClamp)
def _neuron_clamp(iv: NeuronClamp, ctx: Context, edits: Edits) -> None:
    ctx.check_layer(iv.layer)
    down = ctx.adapter.layer_module(iv.layer, "mlp_down")
    down_weight = cast(torch.Tensor, down.weight)
    width = down_weight.shape[0] if type(down).__name__ == "Conv1D" else down_weight.shape[1]
    if not 0 <= iv.neuron < width:
        raise ctx.fail(f"neuron {iv.neuron} is out of range 0..{width - 1}")
    positions = ctx.positions(iv.positions)
    ctx.fits_dtype("value", iv.value)
    if not ctx.dry_run:
        edits.edit("neurons", iv.layer, "set", positions, iv.value, iv.neuron)
