"""The workbench's sweeps: the sweep and path-sweep requests it builds, their streamed and final
results per kind, how stale each is, and the scale sweep grids show (held by `Workbench.sweeps`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np

from mechscope.engine.interventions import Intervention
from mechscope.engine.metric import Metric
from mechscope.engine.results import (
    DIRECTIONS,
    EFFECT_SCALES,
    HEAD_INPUTS,
    SWEEP_KINDS,
    Direction,
    EffectScale,
    HeadInputKind,
    SetSweepResult,
    SweepKind,
    SweepResult,
)
from mechscope.requests.kinds import Outcome, PathSweepRequest, SweepRequest
from mechscope.workbench.state import SweepState

if TYPE_CHECKING:
    from mechscope.workbench.controller import Workbench

SWEEP_NAMES = {"head": "heads", "attn": "attention output per layer and position",
               "mlp": "MLP output per layer and position", "resid": "residual per layer and position",
               "atp": "heads, attribution patching (estimate)"}
EFFECT_SCALE_NOTES = {
    "delta": "Δ metric (patched - base), in the metric's units",
    "normalised": "normalised effect (patched - base) / (source - base): 1 = the patch recovers the whole gap",
}
HEAD_INPUT_NAMES = {"output": "output", "q": "query", "k": "key", "v": "value"}
SWEEPS_ON_TOP = False  # every sweep entry point sweeps the unedited model unless asked (W): like set sweeps


def sweep_title(request: SweepRequest | PathSweepRequest) -> str:
    """`head sweep`, `head key sweep`, `path sweep senders → L23.H3.q`."""
    receiver = getattr(request, "receiver", None)  # a path sweep's
    if receiver is not None:
        return f"path sweep senders → {receiver}"
    head_input = cast(SweepRequest, request).head_input
    if head_input != "output":
        return f"head {HEAD_INPUT_NAMES[head_input]} sweep"
    return f"{request.sweep_kind} sweep"


def sweep_runs(direction: str) -> tuple[str, str]:
    """(the run a sweep patches, the run its activations come from) for a direction."""
    return ("clean", "corrupted") if direction == "noising" else ("corrupted", "clean")


class Sweeps:
    """The latest sweep of each kind (a path sweep fills the head sweep's grid) and the last one
    started. Commands return the request to run, or None with `bench.error` saying why."""

    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        self.states: dict[str, SweepState] = {}
        self.last: SweepState | None = None
        self.effect_scale: EffectScale = "delta"  # how sweep grids show a patch's effect (EFFECT_SCALE_NOTES)

    def clear(self) -> None:
        self.states.clear()
        self.last = None

    def on_top_default(self) -> bool:
        """The one rule every sweep entry point follows unless the user asks otherwise (the W dialog)."""
        return SWEEPS_ON_TOP

    # -- requests -------------------------------------------------------------------------------

    def start(self, kind: SweepKind, direction: Direction = "noising",
              on_top: bool | None = None, head_input: HeadInputKind = "output") -> SweepRequest | None:
        """A sweep of `kind` in `direction`; on the model with the active interventions when `on_top`
        (None: the rule every entry point shares, `SWEEPS_ON_TOP`). `head_input`: what a head
        sweep patches of each head (output, or its query / key / value)."""
        bench = self.bench
        if kind not in SWEEP_KINDS:
            bench.error = f"unknown sweep kind {kind!r}"
            return None
        if head_input not in HEAD_INPUTS or (head_input != "output" and kind != "head"):
            bench.error = f"a {kind} sweep cannot patch a head's {head_input}"
            return None
        if direction not in DIRECTIONS:
            bench.error = f"unknown direction {direction!r}"
            return None
        inputs = self.inputs(on_top)
        if inputs is None:
            return None
        metric, interventions = inputs
        request = SweepRequest(kind, bench.inputs.clean, bench.inputs.corrupted, metric, direction,
                               interventions, head_input)
        self.states[kind] = self.last = SweepState(request)
        bench.error = None
        return request

    def path(self, which: str, direction: Direction = "noising",
             on_top: bool | None = None) -> PathSweepRequest | None:
        """Senders → the selected head: every earlier head's path effect into its query, key or value
        (`which`), shown in the head sweep's grid."""
        bench = self.bench
        if bench.selected is None:
            bench.error = "select a head on the grid first"
            return None
        if which not in ("q", "k", "v"):
            bench.error = f"a path sweep patches into q, k or v, got {which!r}"
            return None
        layer, head = bench.selected
        if layer == 0:
            bench.error = "no head sends to layer 0: pick a head in a later layer"
            return None
        inputs = self.inputs(on_top)
        if inputs is None:
            return None
        metric, interventions = inputs
        request = PathSweepRequest(f"L{layer}.H{head}.{which}", bench.inputs.clean, bench.inputs.corrupted,
                                   metric, direction, interventions)
        self.states["head"] = self.last = SweepState(request)
        bench.error = None
        return request

    def inputs(self, on_top: bool | None) -> tuple[Metric, tuple[Intervention, ...]] | None:
        """What every sweep takes from the inputs: the metric (at the chosen position) and the
        interventions it runs on top of; None (and `bench.error`) without both prompts or a metric."""
        bench = self.bench
        if not bench.inputs.clean.strip() or not bench.inputs.corrupted.strip():
            bench.error = "a sweep needs both a clean and a corrupted prompt"
            return None
        metric = bench.metric()
        if metric is None or not metric.measurable:
            bench.error = bench.inputs.metric()[1] or "a sweep needs a metric"
            return None
        return metric, bench.interventions() if (SWEEPS_ON_TOP if on_top is None else on_top) else ()

    # -- results --------------------------------------------------------------------------------

    def partial(self, request: SweepRequest | PathSweepRequest, result: SweepResult) -> SweepState | None:
        """A streamed partial result; None when it belongs to a sweep that was replaced or cancelled."""
        state = self.states.get(request.sweep_kind)
        if state is None or state.request is not request or state.done or state.cancelled:
            return None
        state.result = result
        return state

    def cancel(self) -> SweepState | None:
        state = self.last
        if state is None or state.done:
            return None
        state.cancelled = True
        return state

    def accept(self, outcome: Outcome) -> None:
        """Store a finished sweep (when it is still the latest of its kind) and record it."""
        request = cast(SweepRequest | PathSweepRequest, outcome.request)
        state = self.states.get(request.sweep_kind)
        if state is None or state.request is not request:
            return None  # a newer sweep of this kind replaced it
        if outcome.cancelled:
            state.cancelled = True
            return None
        state.done = True
        if not outcome.ok:
            state.error = outcome.error
            self.bench.error = f"sweep failed: {outcome.error}"
            return None
        state.result = outcome.result
        self.bench.recorder.prompt_and_metric(request.clean, request.corrupt, request.metric)
        self.bench.recorder.work(outcome, sweep_title(request))
        return None

    def restore(self, outcome: Outcome) -> None:
        """Show a recorded sweep again (nothing is recorded)."""
        request = cast(SweepRequest | PathSweepRequest, outcome.request)
        self.states[request.sweep_kind] = SweepState(request, outcome.result, done=True)

    def staleness(self, kind: str) -> str | None:
        """None when the sweep of `kind` ran on the current inputs, else what changed since."""
        state = self.states.get(kind)
        if state is None:
            return None
        request, inputs = state.request, self.bench.inputs
        prompts = (request.clean, request.corrupt) != (inputs.clean, inputs.corrupted)
        metric = request.metric != self.bench.metric()
        if prompts and metric:
            return "prompts and metric changed"
        if prompts:
            return "prompts changed"
        if metric:
            return "metric changed"
        return None

    def values(self, kind: str) -> np.ndarray | None:
        """The sweep's values when it ran on the current inputs (stale ones are not shown as current)."""
        state = self.states.get(kind)
        if state is None or state.result is None or self.staleness(kind) is not None:
            return None
        return self.effect_values(state.result)

    # -- how the grids show them ----------------------------------------------------------------

    def header(self, request: SweepRequest | PathSweepRequest, result: SweepResult | None = None, *,
               short: bool = False, kv_group: int = 1) -> str:
        """What the sweep view says about a sweep: kind, direction, the model it ran on (and the active
        interventions it did not apply), which run was patched from which, and how to normalise.

        `short` says the same in two lines of about 46 characters, for a view only a few rows tall:
        `head denoising · unedited (1 not applied)` / `corrupted -5.485 ← clean +6.120 · gap +11.605`
        (the run patched, ← the run its activations come from).
        """
        on = request.interventions
        active = len(self.bench.interventions())
        plural = "s" if len(on) > 1 else ""
        if on and short:
            model = f"on top of {len(on)} intervention{plural}"
        elif on:
            labels = ", ".join(iv.label for iv in on[:3]) + (f" +{len(on) - 3} more" if len(on) > 3 else "")
            model = f"on top of {len(on)} intervention{plural}: {labels}"
        elif short:
            model = "unedited" + (f" ({active} not applied)" if active else "")
        else:
            model = "on the unedited model"
            if active:
                model += f" ({active} active intervention{'s' if active > 1 else ''} not applied)"
        where = "" if request.metric.position == -1 else f" · metric at pos {request.metric.position}"
        patched, source = sweep_runs(request.direction)
        title = sweep_title(request).removesuffix(" sweep").removeprefix("path sweep ")
        receiver = getattr(request, "receiver", None)  # a path sweep's
        which = receiver.rsplit(".", 1)[1] if receiver is not None else cast(SweepRequest, request).head_input
        shared = ""
        if which in ("k", "v") and kv_group > 1 and not short:  # grouped-query attention
            shared = f" · each cell patches the KV head shared by {kv_group} query heads"
        lines = [f"{title} {request.direction} · {model}{where}{shared}"]
        if result is None:
            lines.append(f"patches the {patched} run with activations from the {source} run")
        else:
            gap = result.source_metric - result.base_metric
            if short:
                lines.append(f"{patched} {result.base_metric:+.3f} ← {source} {result.source_metric:+.3f}"
                             f" · gap {gap:+.3f}")
            else:
                lines.append(f"patched run {patched} {result.base_metric:+.3f} · from {source} "
                             f"{result.source_metric:+.3f} · gap {gap:+.3f}")
        return "\n".join(lines)

    def toggle_effect_scale(self) -> None:
        """Show sweeps and set sweeps as the raw Δ metric or as the normalised effect; recorded."""
        self.use_effect_scale("normalised" if self.effect_scale == "delta" else "delta")
        self.bench.recorder.effect_scale(self.effect_scale)
        self.bench.info = f"sweep grids: {EFFECT_SCALE_NOTES[self.effect_scale]}"

    def use_effect_scale(self, scale: str) -> None:
        """Set the scale without recording it (a resumed session's)."""
        if scale not in EFFECT_SCALES:
            raise ValueError(f"effect scale must be one of {', '.join(EFFECT_SCALES)}, got {scale!r}")
        self.effect_scale = scale

    def effect_values(self, result: SweepResult | SetSweepResult) -> np.ndarray:
        """A sweep's grid in the chosen scale: Δ metric per cell, or Δ over the gap source - base."""
        if self.effect_scale == "normalised":
            return result.normalised
        return result.values if isinstance(result, SweepResult) else np.asarray(result.mean, dtype=np.float64)
