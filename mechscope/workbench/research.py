"""The Workbench's research commands: metric position, sweeps in both directions (on top of the active
interventions or not), a pinned baseline, reference prompts, generation settings and steering norms.

A mixin of `Workbench` (controller.py): each command edits state and returns the request to run next.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from mechscope.engine.interventions import Intervention, Metric, SteeringVector
from mechscope.engine.results import (
    DIRECTIONS,
    EFFECT_SCALES,
    HEAD_INPUTS,
    SWEEP_KINDS,
    Direction,
    EffectScale,
    HeadInputKind,
    RunResult,
    SetSweepResult,
    SweepKind,
    SweepResult,
)
from mechscope.requests.kinds import (
    Outcome,
    PathSweepRequest,
    ReferencePromptsRequest,
    RunRequest,
    SweepRequest,
)
from mechscope.workbench.state import GenerationSettings, SweepState

if TYPE_CHECKING:
    from mechscope.workbench.controller import Inputs
    from mechscope.workbench.recorder import SessionRecorder
    from mechscope.workbench.sets import PromptSets

SWEEP_NAMES = {"head": "heads", "attn": "attention output per layer and position",
               "mlp": "MLP output per layer and position", "resid": "residual per layer and position",
               "atp": "heads, attribution patching (estimate)"}
EFFECT_SCALE_NOTES = {
    "delta": "Δ metric (patched - base), in the metric's units",
    "normalised": "normalised effect (patched - base) / (source - base): 1 = the patch recovers the whole gap",
}
HEAD_INPUT_NAMES = {"output": "output", "q": "query", "k": "key", "v": "value"}
SWEEPS_ON_TOP = False  # every sweep entry point sweeps the unedited model unless asked (W): like set sweeps
MAX_NEW_TOKENS = 512
MAX_TEMPERATURE = 100.0
MAX_SEED = 2**32 - 1
MAX_REFERENCE_PROMPTS = 256


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


def parse_int(name: str, text: str, low: int, high: int) -> int:
    """An int in [low, high]; ValueError with a one-line reason otherwise."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {text.strip()!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")
    return value


def parse_temperature(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"temperature must be a number, got {text.strip()!r}") from None
    if not math.isfinite(value) or value < 0 or value > MAX_TEMPERATURE:
        raise ValueError(f"temperature must be a finite number in 0..{MAX_TEMPERATURE:g}, got {text.strip()}")
    return value


def check_position(position: int, n_tokens: int | None) -> str | None:
    """The engine's rule for a metric position: -n..n-1 over the prompt's tokens."""
    if n_tokens is not None and not -n_tokens <= position < n_tokens:
        return f"metric position {position} is outside the prompt ({n_tokens} tokens: " \
               f"{-n_tokens}..{n_tokens - 1})"
    return None


def parse_reference_prompts(text: str) -> tuple[str, ...]:
    """One prompt per line; blank lines are skipped; at least one prompt."""
    prompts = tuple(line for line in text.splitlines() if line.strip())
    if not prompts:
        raise ValueError("give at least one reference prompt (one per line)")
    if len(prompts) > MAX_REFERENCE_PROMPTS:
        raise ValueError(f"at most {MAX_REFERENCE_PROMPTS} reference prompts, got {len(prompts)}")
    return prompts


def parse_max_new_tokens(text: str) -> int:
    return parse_int("max new tokens", text, 1, MAX_NEW_TOKENS)


def parse_seed(text: str) -> int:
    return parse_int("seed", text, 0, MAX_SEED)


def parse_generation(max_new_tokens: str, temperature: str, seed: str) -> GenerationSettings:
    """Generation settings from typed text: bounded ints and a finite temperature ≥ 0 (ValueError otherwise)."""
    return GenerationSettings(parse_max_new_tokens(max_new_tokens), parse_temperature(temperature),
                              parse_seed(seed))


GENERATION_PARSERS: dict[str, Callable[[str], float]] = {  # each typed setting, by the field it is typed in
    "max_new_tokens": parse_max_new_tokens, "temperature": parse_temperature, "seed": parse_seed}


def generation_problems(max_new_tokens: str, temperature: str, seed: str) -> dict[str, str]:
    """Each typed generation setting that `parse_generation` refuses, with why (by the same parsers)."""
    problems = {}
    for (name, parse), text in zip(GENERATION_PARSERS.items(), (max_new_tokens, temperature, seed), strict=True):
        try:
            parse(text)
        except ValueError as exc:
            problems[name] = str(exc)
    return problems


@dataclass(frozen=True)
class PinDeltas:
    """The current run against the pinned one: the metric change and each top token's probability change."""

    metric: float | None  # current - pinned (None when either has no metric or the kinds differ)
    pinned_metric: float | None
    probs: tuple[float, ...]  # per top token of the current run: p(now) - p(pinned), in [0, 1] units
    same_prompt: bool


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - np.max(logits)  # [vocab]
    weights = np.exp(shifted)
    return weights / weights.sum()


def pin_deltas(result: RunResult, pinned: RunResult) -> PinDeltas:
    pinned_probs = softmax(pinned.logits)  # [vocab]
    probs = tuple(float(t.prob - pinned_probs[t.id]) for t in result.top)
    same_kind = (result.metric_info is not None and pinned.metric_info is not None
                 and result.metric_info.kind == pinned.metric_info.kind)
    metric = None
    if same_kind and result.metric is not None and pinned.metric is not None:
        metric = float(result.metric - pinned.metric)
    return PinDeltas(metric, pinned.metric, probs, result.token_ids == pinned.token_ids)


class ResearchCommands:
    """Commands past single interventions; `Workbench` provides the attributes declared here."""

    if TYPE_CHECKING:
        inputs: Inputs
        recorder: SessionRecorder
        run: Outcome | None
        sweeps: dict[str, SweepState]
        last_sweep: SweepState | None
        selected: tuple[int, int] | None
        generation_settings: GenerationSettings
        sets: PromptSets
        error: str | None
        info: str

        @property
        def result(self) -> RunResult | None: ...
        @property
        def result_is_current(self) -> bool: ...
        def interventions(self) -> tuple[Intervention, ...]: ...
        def next_run(self) -> RunRequest | None: ...
        def invalidate(self) -> None: ...

    metric_position: int = -1
    effect_scale: EffectScale = "delta"  # how sweep grids show a patch's effect (EFFECT_SCALE_NOTES)
    pinned: Outcome | None = None
    reference_prompts: tuple[str, ...] | None = None  # None: the engine's defaults
    vector_norms: dict[str, float]

    def with_position(self, metric: Metric | None) -> Metric | None:
        if metric is None or metric.position == self.metric_position:
            return metric
        return dataclasses.replace(metric, position=self.metric_position)

    # -- metric ---------------------------------------------------------------------------------

    def n_tokens(self) -> int | None:
        result = self.result
        if result is None or result.prompt != self.inputs.clean:
            return None
        return len(result.tokens)

    def set_metric_position(self, text: str) -> RunRequest | None:
        """`-1` (last token) or any position of the prompt; an error (and no run) otherwise."""
        try:
            position = parse_int("metric position", text, -1_000_000, 1_000_000)
        except ValueError as exc:
            self.error = str(exc)
            return None
        problem = check_position(position, self.n_tokens())
        if problem:
            self.error = problem
            return None
        self.metric_position = position
        self.error = None
        self.info = "metric at the last token" if position == -1 else f"metric at position {position}"
        return self.next_run()

    def position_error(self, text: str) -> str | None:
        """For a dialog: the error `set_metric_position` would give, without changing anything."""
        try:
            position = parse_int("metric position", text, -1_000_000, 1_000_000)
        except ValueError as exc:
            return str(exc)
        return check_position(position, self.n_tokens())

    # -- sweeps ---------------------------------------------------------------------------------

    def sweep_on_top_default(self) -> bool:
        """The one rule every sweep entry point follows unless the user asks otherwise (the W dialog)."""
        return SWEEPS_ON_TOP

    def sweep_with(self, kind: SweepKind, direction: Direction = "noising",
                   on_top: bool | None = None, head_input: HeadInputKind = "output") -> SweepRequest | None:
        """A sweep of `kind` in `direction`; on the model with the active interventions when `on_top`
        (None: the rule every entry point shares, `SWEEPS_ON_TOP`). `head_input`: what a head
        sweep patches of each head (output, or its query / key / value)."""
        if kind not in SWEEP_KINDS:
            self.error = f"unknown sweep kind {kind!r}"
            return None
        if head_input not in HEAD_INPUTS or (head_input != "output" and kind != "head"):
            self.error = f"a {kind} sweep cannot patch a head's {head_input}"
            return None
        if direction not in DIRECTIONS:
            self.error = f"unknown direction {direction!r}"
            return None
        inputs = self.sweep_inputs(on_top)
        if inputs is None:
            return None
        metric, interventions = inputs
        request = SweepRequest(kind, self.inputs.clean, self.inputs.corrupted, metric, direction,
                               interventions, head_input)
        self.sweeps[kind] = self.last_sweep = SweepState(request)
        self.error = None
        return request

    def sweep_inputs(self, on_top: bool | None) -> tuple[Metric, tuple[Intervention, ...]] | None:
        """What every sweep takes from the inputs: the metric (at the chosen position) and the
        interventions it runs on top of; None (and `error`) without both prompts or a metric."""
        if not self.inputs.clean.strip() or not self.inputs.corrupted.strip():
            self.error = "a sweep needs both a clean and a corrupted prompt"
            return None
        metric = self.with_position(self.inputs.metric()[0])
        if metric is None or not metric.measurable:
            self.error = self.inputs.metric()[1] or "a sweep needs a metric"
            return None
        return metric, self.interventions() if (SWEEPS_ON_TOP if on_top is None else on_top) else ()

    def path_sweep(self, which: str, direction: Direction = "noising",
                   on_top: bool | None = None) -> PathSweepRequest | None:
        """Senders → the selected head: every earlier head's path effect into its query, key or value
        (`which`), shown in the head sweep's grid."""
        if self.selected is None:
            self.error = "select a head on the grid first"
            return None
        if which not in ("q", "k", "v"):
            self.error = f"a path sweep patches into q, k or v, got {which!r}"
            return None
        layer, head = self.selected
        if layer == 0:
            self.error = "no head sends to layer 0: pick a head in a later layer"
            return None
        inputs = self.sweep_inputs(on_top)
        if inputs is None:
            return None
        metric, interventions = inputs
        request = PathSweepRequest(f"L{layer}.H{head}.{which}", self.inputs.clean, self.inputs.corrupted, metric,
                                   direction, interventions)
        self.sweeps["head"] = self.last_sweep = SweepState(request)
        self.error = None
        return request

    def sweep_header(self, request: SweepRequest | PathSweepRequest, result: SweepResult | None = None, *,
                     short: bool = False, kv_group: int = 1) -> str:
        """What the sweep view says about a sweep: kind, direction, the model it ran on (and the active
        interventions it did not apply), which run was patched from which, and how to normalise.

        `short` says the same in two lines of about 46 characters, for a view only a few rows tall:
        `head denoising · unedited (1 not applied)` / `corrupted -5.485 ← clean +6.120 · gap +11.605`
        (the run patched, ← the run its activations come from).
        """
        on = request.interventions
        active = len(self.interventions())
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

    # -- effect scale -------------------------------------------------------------------------

    def toggle_effect_scale(self) -> None:
        """Show sweeps and set sweeps as the raw Δ metric or as the normalised effect; recorded."""
        self.use_effect_scale("normalised" if self.effect_scale == "delta" else "delta")
        self.recorder.effect_scale(self.effect_scale)
        self.info = f"sweep grids: {EFFECT_SCALE_NOTES[self.effect_scale]}"

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

    # -- pinned baseline ------------------------------------------------------------------------

    def pin(self) -> bool:
        """Pin the current result: deltas are shown against it until `unpin`."""
        if self.run is None or not self.result_is_current:
            self.error = "nothing to pin: wait for the current run to finish"
            return False
        self.pinned = self.run
        self.error = None
        count = len(self.run.request.interventions)  # type: ignore[union-attr]
        self.info = f"pinned this result ({count} intervention{'s' if count != 1 else ''}): Δ is now against the pin"
        return True

    def unpin(self) -> None:
        self.info = "unpinned: Δ is against no interventions" if self.pinned is not None else "nothing pinned"
        self.pinned = None

    def pin_label(self) -> str:
        """How the pinned run reads in a pane's subtitle."""
        pinned = self.pinned
        if pinned is None:
            return ""
        ivs = cast(RunRequest, pinned.request).interventions
        what = "no interventions" if not ivs else ", ".join(iv.label for iv in ivs[:2]) + (
            f" +{len(ivs) - 2}" if len(ivs) > 2 else "")
        return f"Δ vs PINNED ({what})"

    def deltas_against_pin(self) -> PinDeltas | None:
        result = self.result
        if self.pinned is None or result is None:
            return None
        return pin_deltas(result, self.pinned.result)

    # -- reference prompts ----------------------------------------------------------------------

    def set_reference_prompts(self, text: str) -> ReferencePromptsRequest | None:
        try:
            prompts = parse_reference_prompts(text)
        except ValueError as exc:
            self.error = str(exc)
            return None
        self.error = None
        return ReferencePromptsRequest(prompts)

    def _accept_reference(self, outcome: Outcome) -> RunRequest | None:
        request = cast(ReferencePromptsRequest, outcome.request)
        if not outcome.ok:
            self.error = None if outcome.cancelled else f"reference prompts not set: {outcome.error}"
            return None
        self.reference_prompts = request.prompts
        self.recorder.reference_prompts(request.prompts)
        self.info = f"mean ablation now averages over {self.sets.mean_origin()}"
        self.invalidate()  # mean ablations changed: the same inputs run again
        return self.next_run()

    # -- generation settings ---------------------------------------------------------------------

    def set_generation(self, max_new_tokens: str, temperature: str, seed: str) -> str | None:
        """Validate and store the settings `generate` uses; returns the error, or None when stored."""
        try:
            settings = parse_generation(max_new_tokens, temperature, seed)
        except ValueError as exc:
            return str(exc)
        self.generation_settings = settings
        self.info = (f"generation: {settings.max_new_tokens} tokens, temperature {settings.temperature:g}, "
                     f"seed {settings.seed}")
        return None

    # -- steering norms --------------------------------------------------------------------------

    def remember_vector(self, name: str, values: Any) -> None:
        self.vector_norms[name] = float(np.linalg.norm(np.asarray(values, dtype=np.float64)))

    def steering_norm(self, steer: SteeringVector) -> tuple[float, float | None] | None:
        """(|coeff · v|, median residual norm entering the vector's layer over the positions after the
        first) or None for an unknown vector. Position 0 is left out: its massive activation (a norm
        some hundred times the others') would make any vector look small.

        The residual entering layer L is the one after layer L-1 (the embeddings for L = 0: not in
        the stats, so None)."""
        norm = self.vector_norms.get(steer.vector_id)
        if norm is None:
            return None
        resid = None
        result = self.result
        if result is not None and result.stats is not None and 0 < steer.layer <= result.stats.resid_norm.shape[0]:
            norms = np.asarray(result.stats.resid_norm[steer.layer - 1], dtype=np.float64)  # [pos]
            resid = float(np.median(norms[1:] if norms.size > 1 else norms))
        return abs(steer.coeff) * norm, resid

    def steering_note(self, steer: SteeringVector) -> str:
        norms = self.steering_norm(steer)
        if norms is None:
            return ""
        added, resid = norms
        if resid is None:
            return f" (|Δ| {added:.3g})"
        warning = ": LARGER than the residual" if added > resid else ""
        return f" (|Δ| {added:.3g} vs median resid {resid:.3g} after pos 0{warning})"
