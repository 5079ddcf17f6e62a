"""Interventions compiled to hooks: one function per intervention type, registered in `COMPILERS`.

A compile function checks its intervention against the model and prompt (ranges, lengths, names)
and, unless it is a dry run, adds hooks built on a `Site`, so it edits plain [batch, pos, ...] tensors.
Adding an intervention type: its dataclass in `interventions.py`, a `@compiles(Type)` function here,
and a test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mechscope.engine.addresses import parse_address
from mechscope.engine.errors import InterventionError, PromptError
from mechscope.engine.hooks import Hook
from mechscope.engine.interventions import (
    ActivationPatch,
    AttentionKnockout,
    ComponentAblation,
    HeadAblation,
    HeadScale,
    Intervention,
    NeuronClamp,
    SteeringVector,
)
from mechscope.engine.passes import Passes, ReferenceMeans, SourceActs
from mechscope.engine.placement import execution_device
from mechscope.engine.sites import Site, SiteKind


@dataclass
class Edits:
    """Hooks that apply a list of interventions, and what attribution needs to know about them.

    start: the first layer they touch (layers below reuse the clean pass).
    knockouts: layer -> attention edges (head, query, key, rows) to mask.
    resid_deltas: layer -> what edits writing the residual stream directly added there
      ([batch, pos, d_model] each, filled in during the pass).
    replaced: (layer, "attn" | "mlp") -> positions whose whole output an edit replaced (None: all).
    """

    start: int
    hooks: list[Hook] = field(default_factory=list)
    knockouts: dict[int, list] = field(default_factory=dict)
    resid_deltas: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    replaced: dict[tuple[int, str], list[int] | None] = field(default_factory=dict)

    def add(self, layer: int, hooks: list[Hook]) -> None:
        self.start = min(self.start, layer)
        self.hooks += hooks

    def resid_delta(self, layer: int) -> list[torch.Tensor]:
        return self.resid_deltas.setdefault(layer, [])

    def replace_whole(self, layer: int, component: str, positions: list[int] | None) -> None:
        key = (layer, component)
        if key in self.replaced:
            before = self.replaced[key]
            positions = None if before is None or positions is None else sorted({*before, *positions})
        self.replaced[key] = positions

    def whole_layer_replaced(self, layer: int, component: str, position: int) -> bool:
        """Whether `component`'s output of `layer` at `position` was replaced as a whole."""
        key = (layer, component)
        if key not in self.replaced:
            return False
        positions = self.replaced[key]
        return positions is None or position in positions


@dataclass
class Context:
    """What a compile function may read: the model's passes, the prompt's length and the engine's tables."""

    passes: Passes
    n_pos: int
    corrupted: str | None
    vectors: Mapping[str, np.ndarray]
    reference_prompts: Sequence[str]
    dry_run: bool
    what: str = ""

    @property
    def adapter(self):
        return self.passes.adapter

    def fail(self, message: str) -> InterventionError:
        return InterventionError(f"{self.what}: {message}")

    def check_layer(self, layer: int, head: int | None = None) -> None:
        a = self.adapter
        if not 0 <= layer < a.n_layers:
            raise self.fail(f"layer {layer} is out of range 0..{a.n_layers - 1}")
        if head is not None and not 0 <= head < a.n_heads:
            raise self.fail(f"head {head} is out of range 0..{a.n_heads - 1}")

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

    def source(self, prompt: str, positions: Iterable[int] | None) -> tuple[SourceActs | None, list[int]]:
        """Source activations (None in a dry run) and the source positions to read (explicit, so
        generation can grow the sequence past the source's length)."""
        ids, _ = self.passes.prompt_ids(prompt)
        if positions is None and ids.shape[1] != self.n_pos:
            raise self.fail(
                f"the source prompt has {ids.shape[1]} tokens and this prompt {self.n_pos}; "
                "give explicit positions to patch prompts of different lengths")
        src_positions = self.positions(range(self.n_pos) if positions is None else positions, ids.shape[1],
                                       " (source)")
        return (None if self.dry_run else self.passes.source_acts(ids)), src_positions or []

    def resample_source(self, positions: Iterable[int] | None) -> tuple[SourceActs | None, list[int]]:
        if not self.corrupted:
            raise self.fail("resample ablation needs a corrupted prompt")
        return self.source(self.corrupted, positions)

    def means(self) -> ReferenceMeans:
        return self.passes.reference_means(self.reference_prompts)

    def fits_dtype(self, name: str, value: float) -> None:
        """Refuse a finite number the model's dtype would turn into infinity (float16: past 65504)."""
        limit = torch.finfo(self.passes.dtype).max
        if abs(value) > limit:
            raise self.fail(f"{name} {value:g} overflows the model's {str(self.passes.dtype).removeprefix('torch.')}"
                            f" (largest {limit:g})")


Compiler = Callable[[Intervention, Context, Edits], None]
COMPILERS: dict[type[Intervention], Compiler] = {}


def compiles(kind: type[Intervention]) -> Callable[[Compiler], Compiler]:
    """Register the compile function of an intervention type."""
    def register(fn: Compiler) -> Compiler:
        COMPILERS[kind] = fn
        return fn

    return register


def compile_edits(passes: Passes, interventions: Iterable[Intervention], n_pos: int, corrupted: str | None,
                  vectors: Mapping[str, np.ndarray], reference_prompts: Sequence[str],
                  dry_run: bool = False) -> Edits:
    """The hooks of `interventions` (enabled ones only) on a prompt of `n_pos` tokens; InterventionError
    naming the first one that does not fit. A dry run only checks and builds no hooks."""
    edits = Edits(start=passes.adapter.n_layers)
    context = Context(passes, n_pos, corrupted, vectors, reference_prompts, dry_run)
    for iv in interventions:
        if not iv.enabled:
            continue
        context.what = iv.label
        compile_one = COMPILERS.get(type(iv))
        if compile_one is None:
            raise context.fail(f"unsupported intervention type {type(iv).__name__}")
        try:
            compile_one(iv, context, edits)
        except (PromptError, ValueError) as exc:
            raise context.fail(str(exc)) from None
    return edits


def _dst(positions: list[int] | None) -> slice | list[int]:
    return slice(None) if positions is None else positions


def _component(site: str) -> SiteKind:
    return "attn" if site == "attn" else "mlp"


# ---------------------------------------------------------------- edit functions on plain tensors


def _set_head(head: int, positions: list[int] | None, value: Callable[[torch.Tensor], torch.Tensor]):
    dst = _dst(positions)

    def edit(z: torch.Tensor) -> torch.Tensor:  # [batch, pos, head, d_head]
        z[:, dst, head] = value(z[:, dst, head])
        return z

    return edit


def _replace(positions: list[int] | None, value: torch.Tensor | float, deltas: list | None = None):
    """Set positions of a [batch, pos, d] activation to `value` (broadcast), recording the change."""
    dst = _dst(positions)

    def edit(x: torch.Tensor) -> torch.Tensor:  # [batch, pos, d]
        original = x.clone() if deltas is not None else None
        x[:, dst] = value
        if deltas is not None:
            deltas.append((x - original).detach())
        return x

    return edit


def _source_rows(source: torch.Tensor, src_pos: list[int]) -> torch.Tensor:
    return source[:, src_pos]  # [1, len(src_pos), ...]


# ---------------------------------------------------------------- one compile function per type


@compiles(HeadAblation)
def _head_ablation(iv: HeadAblation, ctx: Context, edits: Edits) -> None:
    ctx.check_layer(iv.layer, iv.head)
    positions = ctx.positions(iv.positions)
    acts = src_pos = None
    if iv.mode == "resample":
        acts, src_pos = ctx.resample_source(iv.positions)
        positions = positions if positions is not None else list(range(ctx.n_pos))
    if ctx.dry_run:
        return
    if iv.mode == "zero":
        def value(current: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(current)
    elif iv.mode == "mean":
        mean = ctx.means().z[iv.layer][iv.head]  # [d_head]

        def value(current: torch.Tensor) -> torch.Tensor:
            return mean.expand_as(current)
    else:
        rows = _source_rows(acts.z[iv.layer], src_pos)[:, :, iv.head]  # [1, pos, d_head]

        def value(current: torch.Tensor) -> torch.Tensor:
            return rows.expand_as(current)
    edits.add(iv.layer, Site("heads", iv.layer).edit(ctx.adapter, _set_head(iv.head, positions, value)))


@compiles(HeadScale)
def _head_scale(iv: HeadScale, ctx: Context, edits: Edits) -> None:
    ctx.check_layer(iv.layer, iv.head)
    positions = ctx.positions(iv.positions)
    ctx.fits_dtype("factor", iv.factor)
    if ctx.dry_run:
        return
    factor = iv.factor
    edits.add(iv.layer, Site("heads", iv.layer).edit(
        ctx.adapter, _set_head(iv.head, positions, lambda current: current * factor)))


@compiles(ComponentAblation)
def _component_ablation(iv: ComponentAblation, ctx: Context, edits: Edits) -> None:
    ctx.check_layer(iv.layer)
    positions = ctx.positions(iv.positions)
    acts = src_pos = None
    if iv.mode == "resample":
        acts, src_pos = ctx.resample_source(iv.positions)
        positions = positions if positions is not None else list(range(ctx.n_pos))
    if ctx.dry_run:
        return
    name = "attn_out" if iv.component == "attn" else "mlp_out"
    value: torch.Tensor | float
    if iv.mode == "zero":
        value = 0.0
    elif iv.mode == "mean":
        value = getattr(ctx.means(), name)[iv.layer]  # [d_model]
    else:
        value = _source_rows(getattr(acts, name)[iv.layer], src_pos)  # [1, pos, d_model]
    edits.replace_whole(iv.layer, iv.component, positions)
    edits.add(iv.layer, Site(_component(iv.component), iv.layer).edit(ctx.adapter, _replace(positions, value)))


@compiles(ActivationPatch)
def _activation_patch(iv: ActivationPatch, ctx: Context, edits: Edits) -> None:
    addr = parse_address(iv.address)
    ctx.check_layer(addr.layer, addr.head)
    positions = ctx.positions(iv.positions)
    acts, src_pos = ctx.source(iv.source_prompt, iv.positions)
    positions = positions if positions is not None else list(range(ctx.n_pos))
    if ctx.dry_run:
        return
    layer, a = addr.layer, ctx.adapter
    if addr.site == "head":
        rows = _source_rows(acts.z[layer], src_pos)[:, :, addr.head]  # [1, pos, d_head]
        hooks = Site("heads", layer).edit(a, _set_head(addr.head, positions, lambda c: rows.expand_as(c)))
    elif addr.site in ("attn", "mlp"):
        source = acts.attn_out if addr.site == "attn" else acts.mlp_out
        edits.replace_whole(layer, addr.site, positions)
        hooks = Site(_component(addr.site), layer).edit(a, _replace(positions, _source_rows(source[layer], src_pos)))
    elif addr.site in ("resid_pre", "embed"):
        hooks = Site("resid_pre", layer).edit(
            a, _replace(positions, _source_rows(acts.resid_pre[layer], src_pos), edits.resid_delta(layer)))
    else:
        hooks = Site("resid_post", layer).edit(
            a, _replace(positions, _source_rows(acts.resid_post[layer], src_pos), edits.resid_delta(layer)))
    edits.add(layer, hooks)


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
    if positions not in ("all", "last"):
        ctx.positions(positions)
    ctx.fits_dtype("coeff", iv.coeff)
    peak = float(np.abs(vector).max(initial=0.0)) * abs(iv.coeff)
    if peak > torch.finfo(ctx.passes.dtype).max:
        raise ctx.fail(f"coeff {iv.coeff:g} times the vector's largest entry overflows the model's dtype")
    if ctx.dry_run:
        return
    layer_device = execution_device(ctx.adapter.layers[iv.layer])
    delta = torch.as_tensor(vector, device=layer_device, dtype=ctx.passes.dtype) * iv.coeff  # [d_model]
    deltas = edits.resid_delta(iv.layer)

    def steer(hidden: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_model]
        original = hidden.clone()
        if positions == "all":
            hidden = hidden + delta
        elif positions == "last":
            hidden[:, -1] = hidden[:, -1] + delta
        else:
            hidden[:, list(positions)] = hidden[:, list(positions)] + delta
        deltas.append((hidden - original).detach())
        return hidden

    edits.add(iv.layer, Site("resid_pre", iv.layer).edit(ctx.adapter, steer))


@compiles(AttentionKnockout)
def _attention_knockout(iv: AttentionKnockout, ctx: Context, edits: Edits) -> None:
    ctx.check_layer(iv.layer, iv.head)
    q, k = ctx.positions((iv.query_pos, iv.key_pos)) or ()
    if k > q:
        raise ctx.fail(f"key position {k} is after query position {q} (causal)")
    if q == 0:
        raise ctx.fail("the first token attends only to itself; it cannot be knocked out")
    row = {edge[2] for edge in edits.knockouts.get(iv.layer, []) if edge[:2] == (iv.head, q)} | {k}
    if len(row) == q + 1:
        raise ctx.fail(f"this would knock out every key query {q} can attend to; keep at least one")
    edits.knockouts.setdefault(iv.layer, []).append((iv.head, q, k, None))
    edits.start = min(edits.start, iv.layer)


@compiles(NeuronClamp)
def _neuron_clamp(iv: NeuronClamp, ctx: Context, edits: Edits) -> None:
    ctx.check_layer(iv.layer)
    down = ctx.adapter.layer_module(iv.layer, "mlp_down")
    width = down.weight.shape[0] if type(down).__name__ == "Conv1D" else down.weight.shape[1]
    if not 0 <= iv.neuron < width:
        raise ctx.fail(f"neuron {iv.neuron} is out of range 0..{width - 1}")
    positions = ctx.positions(iv.positions)
    ctx.fits_dtype("value", iv.value)
    if ctx.dry_run:
        return
    dst, neuron, value = _dst(positions), iv.neuron, iv.value

    def clamp(x: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_mlp]
        x[:, dst, neuron] = value
        return x

    edits.add(iv.layer, Site("neurons", iv.layer).edit(ctx.adapter, clamp))
