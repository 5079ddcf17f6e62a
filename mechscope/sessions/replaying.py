"""Replay a session on an engine and compare every recorded outcome with the recomputed one.

Steps are the events with an outcome: `run` (top-k and metric), `sweep` (the matrix) and `generate`
(token ids). `vector` and `reference_prompts` events are applied to the engine as they come (a failed
step only if the engine refuses them, e.g. a vector of the wrong width); the engine's own vectors and
reference prompts are restored afterwards.

What counts as a match:
- top-k token ids must be identical, rank by rank. The one exception is a near-tie: two tokens whose
  probabilities differ by less than the probability tolerance may swap ranks (or swap across the k-th
  boundary), since which of them comes first is then decided by rounding.
- every top-k probability within `prob_atol` (absolute) of the recorded one;
- the metric and the baseline metric within `metric_atol + metric_rtol * |recorded|`;
- sweep matrices: every cell the recording finished within the metric tolerance;
- generations: identical token ids.
- set runs (`set_run`, over the `prompt_set` event they name): every row's metric with and without
  the interventions within the metric tolerance;
- set sweeps (`set_sweep`): the mean base metric and every finished cell of the mean matrix.

Tolerances depend on the dtype and device of both the recording and the replay (the looser applies):

  dtype / device        prob_atol  metric_atol  metric_rtol
  float32 / float64 CPU   1e-4       1e-3         1e-4
  float32 on a GPU        1e-3       1e-2         1e-3     (TF32 matmuls, other kernels)
  float16                 2e-2       1e-1         1e-2
  bfloat16 or unknown     5e-2       2.5e-1       2e-2     (8-bit mantissa; also quantized models)

The same numbers apply at every position; `Tolerance` can be passed explicitly to override them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mechscope.sessions.events import Event
from mechscope.sessions.outcomes import (
    format_generation,
    format_outcome,
    format_sweep,
    outcome_from_result,
)
from mechscope.sessions.store import Session

STEP_KINDS = ("run", "sweep", "generate", "set_run", "set_sweep")


@dataclass(frozen=True)
class Tolerance:
    """How far a recomputed outcome may be from the recorded one and still match."""

    prob_atol: float
    metric_atol: float
    metric_rtol: float
    label: str = ""

    def metric_close(self, recorded: float | None, recomputed: float | None) -> bool:
        if recorded is None or recomputed is None:
            return recorded is None and recomputed is None
        if not math.isfinite(recomputed):
            return False
        return abs(recorded - recomputed) <= self.metric_atol + self.metric_rtol * abs(recorded)

    def looser(self, other: Tolerance) -> Tolerance:
        if (other.prob_atol, other.metric_atol) > (self.prob_atol, self.metric_atol):
            return other
        return self

    def describe(self) -> str:
        return (f"probabilities within {self.prob_atol:g}, metric within {self.metric_atol:g} "
                f"+ {self.metric_rtol:g}x|value| ({self.label})")


TOLERANCES: dict[str, Tolerance] = {
    "float32-cpu": Tolerance(1e-4, 1e-3, 1e-4, "float32 on CPU"),
    "float32-accelerator": Tolerance(1e-3, 1e-2, 1e-3, "float32 on a GPU"),
    "float16": Tolerance(2e-2, 1e-1, 1e-2, "float16"),
    "bfloat16": Tolerance(5e-2, 2.5e-1, 2e-2, "bfloat16 or quantized"),
}


def tolerance_for(device: str | None, dtype: str | None) -> Tolerance:
    """The tolerance for outcomes computed on `device` in `dtype` (as ModelInfo spells them)."""
    dtype = (dtype or "").removeprefix("torch.")
    device = (device or "cpu").split(":")[0]
    if dtype in ("float32", "float64"):
        return TOLERANCES["float32-cpu" if device == "cpu" else "float32-accelerator"]
    if dtype == "float16":
        return TOLERANCES["float16"]
    return TOLERANCES["bfloat16"]


def session_tolerance(session: Session, engine: Any) -> Tolerance:
    """The looser of the tolerances of the recording (manifest) and of the replaying engine."""
    current = tolerance_for(engine.info.device, engine.info.dtype)
    model = session.manifest.get("model")
    if not isinstance(model, dict):
        return current
    return current.looser(tolerance_for(str(model.get("device")), str(model.get("dtype"))))


@dataclass(frozen=True)
class StepResult:
    """One replayed step. `recorded`/`recomputed` are one-line summaries; the dicts hold the numbers."""

    seq: int
    kind: str
    recorded: str
    recomputed: str
    matches: bool
    detail: str = ""
    line: int = 0
    recorded_data: dict[str, Any] = field(default_factory=dict)
    recomputed_data: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        return "ok" if self.matches else ("ERROR" if self.recomputed_data is None else "DRIFT")

    @property
    def recorded_short(self) -> str:
        """The top token and metric of a run (the summary for other steps), for narrow columns."""
        return self._short(self.recorded_data, self.recorded)

    @property
    def recomputed_short(self) -> str:
        return self._short(self.recomputed_data, self.recomputed)

    def _short(self, data: dict[str, Any] | None, summary: str) -> str:
        """`' Mary' 0.4123 | +1.2345` (top-1 | metric) for runs."""
        if self.kind != "run" or not data or not data["top_ids"]:
            return summary
        metric = data.get("metric")
        head = f"{data['top_tokens'][0]!r} {data['top_probs'][0]:.4f}"
        return head if metric is None else f"{head} | {metric:+.4f}"


def count_steps(session: Session) -> int:
    return sum(1 for event in session.events if event.kind in STEP_KINDS)


def replay(session: Session, engine: Any, on_step: Callable[[StepResult], object] | None = None,
           should_stop: Callable[[], bool] | None = None,
           tolerance: Tolerance | None = None) -> list[StepResult]:
    """Re-run every run/sweep/generate event of `session` on `engine`; one StepResult per step.

    A step that raises (an intervention that does not fit this model...) is a failed step, not an
    exception. `should_stop` is checked between steps and passed to the engine; when it fires the
    engine raises `Cancelled`, which propagates.
    """
    from mechscope.engine.errors import Cancelled, MechscopeError

    tolerance = tolerance or session_tolerance(session, engine)
    saved_vectors = dict(engine.vectors)
    saved_reference = list(engine.reference_prompts)
    steps: list[StepResult] = []
    try:
        for event in session.events:
            if should_stop is not None and should_stop():
                raise Cancelled("replay stopped")
            if event.kind in ("vector", "reference_prompts"):
                failure = _apply_setting(session, engine, event)
                if failure is not None:
                    steps.append(failure)
                    if on_step is not None:
                        on_step(failure)
                continue
            if event.kind not in STEP_KINDS:
                continue
            try:
                step = _STEPPERS[event.kind](session, engine, event, tolerance, should_stop)
            except Cancelled:
                raise
            except Exception as exc:  # a step that fails on this engine is reported, not raised
                step = StepResult(event.seq, event.kind, _recorded_summary(session, event),
                                  "-", False, f"error: {_one_line(exc)}", event.line,
                                  _recorded_data(event), None)
            steps.append(step)
            if on_step is not None:
                on_step(step)
    finally:
        # Through the engine's methods, so a remote engine's server gets its own vectors back too.
        for name in set(engine.vectors) - set(saved_vectors):
            engine.remove_vector(name)
        for name, vector in saved_vectors.items():
            engine.add_vector(name, vector)
        if list(engine.reference_prompts) != saved_reference:
            with contextlib.suppress(MechscopeError):  # a server refuses an empty set: it keeps the replay's
                engine.reference_prompts = saved_reference
    return steps


def _apply_setting(session: Session, engine: Any, event: Event) -> StepResult | None:
    """Load a vector or reference prompts into the engine; a failed step if this engine refuses them."""
    from mechscope.engine.errors import MechscopeError

    try:
        if event.kind == "vector":
            engine.add_vector(event["name"], session.tensor(event))
        else:
            engine.set_reference_prompts(event["prompts"])
        return None
    except MechscopeError as exc:
        label = (f"vector {event['name']!r} [{event['shape'][0]}]" if event.kind == "vector"
                 else f"{len(event['prompts'])} reference prompts")
        return StepResult(event.seq, event.kind, label, "-", False, f"error: {_one_line(exc)}",
                          event.line, {}, None)


def _interventions(dicts: Sequence[dict]) -> list[Any]:
    from mechscope.engine.interventions import Intervention

    return [iv for iv in (Intervention.from_dict(d) for d in dicts) if iv.enabled]


def _metric(data: dict | None) -> Any:
    from mechscope.engine.interventions import Metric

    return None if data is None else Metric.from_dict(data)


def _replay_run(session: Session, engine: Any, event: Event, tolerance: Tolerance,
                should_stop: Callable[[], bool] | None) -> StepResult:
    result = engine.run(event["prompt"], interventions=_interventions(event["interventions"]),
                        metric=_metric(event["metric"]), corrupted=event["corrupted"],
                        top_k=event["top_k"], should_stop=should_stop)
    recorded, recomputed = event["outcome"], outcome_from_result(result)
    problems = compare_outcomes(recorded, recomputed, tolerance)
    return StepResult(event.seq, "run", format_outcome(recorded), format_outcome(recomputed),
                      not problems, "; ".join(problems), event.line, recorded, recomputed)


def _replay_sweep(session: Session, engine: Any, event: Event, tolerance: Tolerance,
                  should_stop: Callable[[], bool] | None) -> StepResult:
    on_top = event.get("interventions") or []
    extra = {"interventions": _interventions(on_top)} if on_top else {}
    result = engine.sweep(event["sweep"], event["clean"], event["corrupt"], _metric(event["metric"]),
                          direction=event["direction"], should_stop=should_stop, **extra)
    recorded_values = session.tensor(event)
    values = np.asarray(result.values, dtype=np.float32)
    problems = []
    if not tolerance.metric_close(event["base_metric"], float(result.base_metric)):
        problems.append(f"base metric {event['base_metric']:+.6f} -> {result.base_metric:+.6f}")
    problems += _matrix_problems(recorded_values, values, tolerance, "[{row}, {col}]")
    recomputed = {"base_metric": float(result.base_metric), "shape": list(values.shape)}
    return StepResult(event.seq, "sweep", format_sweep(recorded_values, event["base_metric"]),
                      format_sweep(values, float(result.base_metric)), not problems,
                      "; ".join(problems), event.line, _recorded_data(event), recomputed)


def _replay_generate(session: Session, engine: Any, event: Event, tolerance: Tolerance,
                     should_stop: Callable[[], bool] | None) -> StepResult:
    params = event["params"]
    # Only the recorded tokens are compared, so never generate more than were recorded (a crafted
    # max_new_tokens would otherwise run for hours); a request past the model's context is refused.
    max_new_tokens = min(params["max_new_tokens"], len(event["token_ids"]))
    context = int(engine.info.max_context)
    prompt_tokens = min(len(engine.tokenize(event["prompt"])[0]), context)
    if prompt_tokens + max_new_tokens > context:
        raise ValueError(f"{max_new_tokens} new tokens after a {prompt_tokens}-token prompt do not fit "
                         f"the model's context of {context} tokens")
    tokens = engine.generate(event["prompt"], interventions=_interventions(event["interventions"]),
                             max_new_tokens=max_new_tokens,
                             temperature=params["temperature"], seed=params["seed"],
                             corrupted=event["corrupted"], should_stop=should_stop)
    ids, texts = [int(t.id) for t in tokens], [str(t.text) for t in tokens]
    problems = []
    if ids != event["token_ids"]:
        first = next((i for i, (a, b) in enumerate(zip(ids, event["token_ids"])) if a != b),
                     min(len(ids), len(event["token_ids"])))
        problems.append(f"tokens differ from position {first}")
    return StepResult(event.seq, "generate", format_generation(event["token_ids"], event["tokens"]),
                      format_generation(ids, texts), not problems, "; ".join(problems), event.line,
                      _recorded_data(event), {"token_ids": ids, "tokens": texts})


def _replay_set_run(session: Session, engine: Any, event: Event, tolerance: Tolerance,
                    should_stop: Callable[[], bool] | None) -> StepResult:
    pset = session.prompt_set(event["set"])
    result = engine.run_set(pset, event["metric_kind"], _interventions(event["interventions"]),
                            event["prompt"])
    problems = []
    for key, new in (("values", result.values), ("baseline", result.baseline)):
        new = [float(v) for v in np.asarray(new).reshape(-1)]
        old = event[key]
        if len(new) != len(old):
            problems.append(f"{key}: {len(new)} rows, recorded {len(old)}")
            continue
        off = [i for i, (a, b) in enumerate(zip(old, new)) if not tolerance.metric_close(a, b)]
        if off:
            problems.append(f"{key}: {len(off)} row(s) differ, e.g. row {off[0] + 1} "
                            f"{old[off[0]]:+.6f} -> {new[off[0]]:+.6f}")
    recomputed = {"mean": float(np.mean(result.values)), "rows": len(np.asarray(result.values))}
    return StepResult(event.seq, "set_run", _format_set_run(event["values"]),
                      _format_set_run(list(np.asarray(result.values).reshape(-1))), not problems,
                      "; ".join(problems), event.line, _recorded_data(event), recomputed)


def _format_set_run(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{len(v)} rows: mean {v.mean():+.4f} ± {v.std():.4f}"


def _replay_set_sweep(session: Session, engine: Any, event: Event, tolerance: Tolerance,
                      should_stop: Callable[[], bool] | None) -> StepResult:
    pset = session.prompt_set(event["set"])
    result = engine.sweep_set(pset, kind=event["metric_kind"], direction=event["direction"],
                              source=event["source"], should_stop=should_stop)
    recorded_values = session.tensor(event)
    values = np.asarray(result.mean, dtype=np.float32)
    base = float(np.mean(result.base_metric))
    problems = []
    if not tolerance.metric_close(event["base_metric"], base):
        problems.append(f"mean base metric {event['base_metric']:+.6f} -> {base:+.6f}")
    problems += _matrix_problems(recorded_values, values, tolerance, "L{row}.H{col}")
    recomputed = {"base_metric": base, "shape": list(values.shape)}
    return StepResult(event.seq, "set_sweep", format_sweep(recorded_values, event["base_metric"]),
                      format_sweep(values, base), not problems, "; ".join(problems), event.line,
                      _recorded_data(event), recomputed)


_STEPPERS = {"run": _replay_run, "sweep": _replay_sweep, "generate": _replay_generate,
             "set_run": _replay_set_run, "set_sweep": _replay_set_sweep}


def compare_outcomes(recorded: dict, recomputed: dict, tolerance: Tolerance) -> list[str]:
    """Reasons the recomputed run outcome does not match the recorded one (empty when it matches)."""
    problems = []
    rec_ids, new_ids = recorded["top_ids"], recomputed["top_ids"]
    rec_probs, new_probs = recorded["top_probs"], recomputed["top_probs"]
    if len(rec_ids) != len(new_ids):
        problems.append(f"top-k has {len(new_ids)} tokens, recorded {len(rec_ids)}")
    else:
        for rank, (old, new) in enumerate(zip(rec_probs, new_probs), 1):
            if abs(old - new) > tolerance.prob_atol:
                problems.append(f"p at rank {rank} {old:.6f} -> {new:.6f}")
                break
        for rank, (old_id, new_id) in enumerate(zip(rec_ids, new_ids)):
            if old_id != new_id and not _near_tie(rank, rec_ids, rec_probs, new_ids, new_probs,
                                                  tolerance.prob_atol):
                problems.append(f"token at rank {rank + 1} {recorded['top_tokens'][rank]!r} ({old_id}) "
                                f"-> {recomputed['top_tokens'][rank]!r} ({new_id})")
                break
    for key, label in (("metric", "metric"), ("baseline_metric", "baseline metric")):
        old, new = recorded.get(key), recomputed.get(key)
        if not tolerance.metric_close(old, new):
            shown = [("none" if v is None else f"{v:+.6f}") for v in (old, new)]
            problems.append(f"{label} {shown[0]} -> {shown[1]}")
    return problems


def _near_tie(rank: int, rec_ids: list[int], rec_probs: list[float], new_ids: list[int],
              new_probs: list[float], atol: float) -> bool:
    """Whether the recorded token at `rank` moved only because it is tied with its neighbours."""
    old_id, old_p = rec_ids[rank], rec_probs[rank]
    if old_id in new_ids:
        return abs(new_probs[new_ids.index(old_id)] - old_p) <= atol and abs(new_probs[rank] - old_p) <= atol
    # fell out of the top-k: only a tie with the last kept token explains that
    return abs(new_probs[-1] - old_p) <= atol


def _recorded_data(event: Event) -> dict[str, Any]:
    if event.kind == "run":
        return dict(event["outcome"])
    if event.kind == "generate":
        return {"token_ids": list(event["token_ids"]), "tokens": list(event["tokens"])}
    if event.kind == "set_run":
        return {"mean": float(np.mean(event["values"])), "rows": len(event["values"])}
    return {"base_metric": event["base_metric"], "shape": list(event["shape"])}


def _recorded_summary(session: Session, event: Event) -> str:
    if event.kind == "run":
        return format_outcome(event["outcome"])
    if event.kind == "generate":
        return format_generation(event["token_ids"], event["tokens"])
    if event.kind == "set_run":
        return _format_set_run(event["values"])
    return format_sweep(session.tensor(event), event["base_metric"])


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _matrix_problems(recorded: np.ndarray, values: np.ndarray, tolerance: Tolerance,
                     cell: str) -> list[str]:
    """How a recomputed sweep matrix differs from the recorded one (finished cells only); `cell`
    names a cell from `row` and `col`."""
    if values.shape != recorded.shape:
        return [f"shape {list(recorded.shape)} -> {list(values.shape)}"]
    allowed = tolerance.metric_atol + tolerance.metric_rtol * np.abs(recorded)
    off = np.isfinite(recorded) & ~(np.abs(values - recorded) <= allowed)
    if not off.any():
        return []
    row, col = np.argwhere(off)[0]
    return [f"{int(off.sum())} cell(s) differ, e.g. {cell.format(row=row, col=col)} "
            f"{recorded[row, col]:+.6f} -> {values[row, col]:+.6f}"]
