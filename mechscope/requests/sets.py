"""Handlers of the prompt-set requests: template sets, set runs, set sweeps, estimates (with exact
verification), head detectors and massive activations."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mechscope.engine.prompt_sets import PromptSet, template_set
from mechscope.engine.results import (
    HeadScores,
    MassiveLayer,
    SetRunResult,
    SetSweepResult,
    VerifiedEstimate,
)
from mechscope.requests.kinds import (
    AUTO_VERIFY,
    DetectHeadsRequest,
    EstimateRequest,
    MassiveRequest,
    RunSetRequest,
    SweepSetRequest,
    TemplateSetRequest,
)
from mechscope.requests.registry import (
    NUMBER,
    Handler,
    OnPartial,
    ShouldStop,
    Summary,
    engine_method,
    handles,
    need,
    need_array,
    need_list,
)
from mechscope.requests.tolerance import (
    Tolerance,
    format_rows,
    format_sweep,
    list_problems,
    matrix_problems,
    metric_problems,
)


@handles(TemplateSetRequest, needs=("tokenizer",))
class TemplateSetHandler(Handler):
    """The set's rows are the summary: a replay must build the very same rows."""

    def run(self, engine: Any, request: TemplateSetRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> PromptSet:
        tokenizer = getattr(engine, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("template prompt sets are not available on this engine")
        return template_set(request.template, tokenizer, request.count, request.seed, request.shots)

    def summarise(self, result: PromptSet) -> Summary:
        return Summary(result.to_dict())

    def check(self, request: TemplateSetRequest, summary: Summary) -> None:
        PromptSet.from_dict(summary.data)

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        old, new = recorded.data.get("rows", []), recomputed.data.get("rows", [])
        if len(old) != len(new):
            return [f"{len(new)} rows, recorded {len(old)}"]
        differ = [i for i, (a, b) in enumerate(zip(old, new)) if a != b]
        return [f"{len(differ)} row(s) differ, e.g. row {differ[0] + 1}"] if differ else []

    def describe(self, summary: Summary) -> str:
        return f"set {summary.data.get('name', '')!r}: {len(summary.data.get('rows', []))} rows"

    def restore(self, request: TemplateSetRequest, summary: Summary) -> PromptSet:
        return PromptSet.from_dict(summary.data)


@handles(RunSetRequest, needs=("prompt_sets",))
class RunSetHandler(Handler):
    """Every row's metric with and without the interventions."""

    def run(self, engine: Any, request: RunSetRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> Any:
        return engine_method(engine, "run_set", "prompt_sets")(
            request.pset, request.metric_kind, request.interventions, request.prompt, means=request.means)

    def summarise(self, result: Any) -> Summary:
        return Summary({"values": [float(v) for v in np.asarray(result.values).reshape(-1)],
                        "baseline": [float(v) for v in np.asarray(result.baseline).reshape(-1)]})

    def check(self, request: RunSetRequest, summary: Summary) -> None:
        values = need_list(summary.data, "values", NUMBER, "numbers")
        baseline = need_list(summary.data, "baseline", NUMBER, "numbers")
        if not len(values) == len(baseline) == len(request.pset):
            raise ValueError(f"outcome: {len(values)} values and {len(baseline)} baseline values for "
                             f"a set of {len(request.pset)} rows")

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        return [problem for key in ("values", "baseline")
                for problem in list_problems(key, recorded.data[key], recomputed.data[key], tolerance)]

    def describe(self, summary: Summary) -> str:
        return format_rows(summary.data["values"])

    def restore(self, request: RunSetRequest, summary: Summary) -> Any:
        return SetRunResult(request.pset.name, request.metric_kind,
                            np.asarray(summary.data["values"], dtype=np.float64),  # [row]
                            np.asarray(summary.data["baseline"], dtype=np.float64))  # [row]


@handles(SweepSetRequest, needs=("prompt_sets",))
class SweepSetHandler(Handler):
    """The mean effect per head and the mean base metric are compared; the rows are kept to show again."""

    def run(self, engine: Any, request: SweepSetRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> Any:
        return engine_method(engine, "sweep_set", "prompt_sets")(
            request.pset, kind=request.metric_kind, direction=request.direction,
            source=request.source, on_progress=on_partial, should_stop=should_stop)

    def summarise(self, result: Any) -> Summary:
        per_row = np.asarray(result.per_row, dtype=np.float32)  # [row, layer, head]
        return Summary({"base_metric": float(np.mean(result.base_metric)), "complete": bool(result.complete)},
                       {"mean": np.ascontiguousarray(np.asarray(result.mean, dtype=np.float32)),  # [layer, head]
                        "per_row": np.ascontiguousarray(per_row),
                        "base_metrics": np.asarray(result.base_metric, dtype=np.float32).reshape(-1),  # [row]
                        "source_metrics": np.asarray(result.source_metric, dtype=np.float32).reshape(-1)})

    def check(self, request: SweepSetRequest, summary: Summary) -> None:
        mean = need_array(summary, "mean", 2)
        need(summary.data, "base_metric", NUMBER, "a number")
        if "per_row" in summary.arrays:
            rows = need_array(summary, "per_row", 3).shape
            if rows[1:] != mean.shape:
                raise ValueError(f"array 'per_row' of shape {list(rows)} does not fit 'mean' {list(mean.shape)}")
            for name in ("base_metrics", "source_metrics"):
                if need_array(summary, name, 1).shape[0] != rows[0]:
                    raise ValueError(f"array {name!r} does not have one value per row")

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        return (metric_problems("mean base metric", recorded.data["base_metric"],
                                recomputed.data["base_metric"], tolerance)
                + matrix_problems(recorded.arrays["mean"], recomputed.arrays["mean"], tolerance,
                                  "L{row}.H{col}"))

    def describe(self, summary: Summary) -> str:
        sources = summary.arrays.get("source_metrics")
        source = None if sources is None or not len(sources) else float(np.mean(sources))
        return format_sweep(summary.arrays["mean"], summary.data["base_metric"], source)

    def restore(self, request: SweepSetRequest, summary: Summary) -> Any:
        arrays = summary.arrays
        if "per_row" in arrays:
            per_row = np.asarray(arrays["per_row"], dtype=np.float64)  # [row, layer, head]
            base = np.asarray(arrays["base_metrics"], dtype=np.float64)  # [row]
            source = np.asarray(arrays["source_metrics"], dtype=np.float64)  # [row]
        else:  # recorded before the rows were kept: the mean stands for one row
            per_row = np.asarray(arrays["mean"], dtype=np.float64)[None]  # [1, layer, head]
            base = np.asarray([summary.data["base_metric"]], dtype=np.float64)
            source = np.full(1, np.nan)
        return SetSweepResult(request.pset.name, request.direction, per_row, base, source,
                              bool(summary.data.get("complete", True)))


@handles(EstimateRequest, needs=("estimates", "prompt_sets"))
class EstimateHandler(Handler):
    """The estimate per head and, for the heads it verifies (see `EstimateRequest`), the exact patch
    (the head's output from the row's source prompt) averaged over the set."""

    def run(self, engine: Any, request: EstimateRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> VerifiedEstimate:
        if request.verify_top_k < AUTO_VERIFY:
            raise ValueError(f"verify_top_k must be {AUTO_VERIFY} (automatic) or more, got {request.verify_top_k}")
        verify = None if request.verify_top_k == AUTO_VERIFY else request.verify_top_k
        result = engine_method(engine, "estimate_and_verify", "estimates")(
            request.pset, request.method, request.steps, kind=request.metric_kind,
            direction=request.direction, verify=verify, should_stop=should_stop)
        return result

    def summarise(self, result: VerifiedEstimate) -> Summary:
        exact = [[layer, head, float(value)] for (layer, head), value in sorted(result.exact.items())]
        return Summary({"method": result.method, "exact": exact},
                       {"estimated": np.ascontiguousarray(np.asarray(result.estimated, dtype=np.float32))})

    def check(self, request: EstimateRequest, summary: Summary) -> None:
        layers, heads = need_array(summary, "estimated", 2).shape
        need(summary.data, "method", str, "a string")
        for item in need(summary.data, "exact", list, "a list"):
            if not (isinstance(item, list) and len(item) == 3
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in item[:2])
                    and isinstance(item[2], NUMBER) and 0 <= item[0] < layers and 0 <= item[1] < heads):
                raise ValueError("outcome.exact must hold [layer, head, value] of heads in the grid")

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        problems = matrix_problems(recorded.arrays["estimated"], recomputed.arrays["estimated"],
                                   tolerance, "L{row}.H{col}", "estimate")
        old = {(int(layer), int(head)): value for layer, head, value in recorded.data["exact"]}
        new = {(int(layer), int(head)): value for layer, head, value in recomputed.data["exact"]}
        if set(old) != set(new):
            return [*problems, f"verified heads {sorted(old)} -> {sorted(new)}"]
        for (layer, head), value in sorted(old.items()):
            problems += metric_problems(f"exact L{layer}.H{head}", value, new[(layer, head)], tolerance)
        return problems

    def describe(self, summary: Summary) -> str:
        estimated = np.asarray(summary.arrays["estimated"], dtype=np.float64)
        finite = np.where(np.isfinite(estimated), estimated, 0.0)
        if finite.size == 0:
            return f"{summary.data['method']}: empty"
        layer, head = np.unravel_index(int(np.argmax(np.abs(finite))), finite.shape)
        return (f"{summary.data['method']}: largest L{layer}.H{head} {finite[layer, head]:+.4f}; "
                f"{len(summary.data['exact'])} verified")

    def restore(self, request: EstimateRequest, summary: Summary) -> VerifiedEstimate:
        exact = {(int(layer), int(head)): float(value) for layer, head, value in summary.data["exact"]}
        return VerifiedEstimate(str(summary.data["method"]),
                                np.asarray(summary.arrays["estimated"], dtype=np.float64), exact)


class HeadGridsHandler(Handler):
    """Kinds whose result is one [layer, head] grid per detector (`HeadScores`), kept as arrays under
    the detector's name; a subclass says how to run it."""

    def summarise(self, result: Any) -> Summary:
        return Summary({"detectors": list(result.scores)},
                       {name: np.ascontiguousarray(np.asarray(grid, dtype=np.float32))
                        for name, grid in result.scores.items()})

    def check(self, request: Any, summary: Summary) -> None:
        for name in need_list(summary.data, "detectors", str, "names"):
            need_array(summary, name, 2)

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        if set(recorded.arrays) != set(recomputed.arrays):
            return [f"detectors {sorted(recorded.arrays)} -> {sorted(recomputed.arrays)}"]
        return [problem for name in recorded.arrays for problem in matrix_problems(
            recorded.arrays[name], recomputed.arrays[name], tolerance, "L{row}.H{col}", name)]

    def describe(self, summary: Summary) -> str:
        parts = []
        for name in summary.data.get("detectors", sorted(summary.arrays)):
            grid = np.nan_to_num(np.asarray(summary.arrays[name], dtype=np.float64))
            layer, head = np.unravel_index(int(np.argmax(grid)), grid.shape) if grid.size else (0, 0)
            parts.append(f"{name} L{layer}.H{head}")
        return "top heads: " + ", ".join(parts)

    def restore(self, request: Any, summary: Summary) -> HeadScores:
        names = [n for n in summary.data.get("detectors", []) if n in summary.arrays] or list(summary.arrays)
        return HeadScores({name: np.asarray(summary.arrays[name], dtype=np.float64) for name in names})


@handles(DetectHeadsRequest, needs=("head_detectors",))
class DetectHeadsHandler(HeadGridsHandler):
    """The model's head-detector grids (cached per model by the engine)."""

    def run(self, engine: Any, request: DetectHeadsRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> Any:
        return engine_method(engine, "detect_heads", "head_detectors")()


def _number_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


@handles(MassiveRequest, needs=("massive_activations",))
class MassiveHandler(Handler):
    """Per layer: which dimensions are massive in how many prompts (compared exactly), their peak
    values and the layer's median |h| (within the metric tolerance)."""

    def run(self, engine: Any, request: MassiveRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> Any:
        return engine_method(engine, "massive_activations", "massive_activations")(request.pset, request.ratio)

    def summarise(self, result: Any) -> Summary:
        layers = [{"layer": int(item.layer), "dims": [int(d) for d in item.dims],
                   "counts": [int(c) for c in item.counts],
                   "peak": [[_number_or_none(v) for v in row] for row in item.peak],
                   "position": [[int(p) for p in row] for row in item.position],
                   "spread": [_number_or_none(v) for v in item.spread],
                   "median": [float(v) for v in item.median], "constant": bool(item.constant)}
                  for item in result]
        return Summary({"layers": layers})

    def check(self, request: MassiveRequest, summary: Summary) -> None:
        for item in need(summary.data, "layers", list, "a list"):
            if not isinstance(item, dict):
                raise ValueError("outcome.layers must hold objects")
            need(item, "layer", int, "an integer")
            dims = need_list(item, "dims", int, "integers")
            if len(need_list(item, "counts", int, "integers")) != len(dims) \
                    or len(need(item, "peak", list, "a list")) != len(dims) \
                    or len(need(item, "position", list, "a list")) != len(dims) \
                    or len(need(item, "spread", list, "a list")) != len(dims):
                raise ValueError("outcome.layers: counts, peak, position and spread need one entry per dim")
            need_list(item, "median", NUMBER, "numbers")
            for row in item["peak"]:
                if not isinstance(row, list) or not all(v is None or isinstance(v, NUMBER) for v in row):
                    raise ValueError("outcome.layers: peak must hold lists of numbers or null")
            need(item, "constant", bool, "true or false")

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        old, new = recorded.data["layers"], recomputed.data["layers"]
        if len(old) != len(new):
            return [f"{len(new)} layers, recorded {len(old)}"]
        for before, after in zip(old, new):
            where = f"layer {before['layer']}"
            if (before["dims"], before["counts"]) != (after["dims"], after["counts"]):
                return [f"{where}: massive dims {before['dims']} -> {after['dims']}"]
            problems = list_problems(f"{where} median", before["median"], after["median"], tolerance)
            peaks = [[_number(v) for v in row] for row in before["peak"]]
            new_peaks = [[_number(v) for v in row] for row in after["peak"]]
            if peaks:
                problems += matrix_problems(peaks, new_peaks, tolerance, "dim {row} prompt {col}", where)
            if problems:
                return problems
        return []

    def describe(self, summary: Summary) -> str:
        layers = summary.data["layers"]
        found = [f"L{item['layer']}:{','.join(str(d) for d in item['dims'][:4])}"
                 for item in layers if item["dims"]]
        return "massive dims " + (" ".join(found[:6]) if found else "none")

    def restore(self, request: MassiveRequest, summary: Summary) -> Any:
        return [MassiveLayer(int(item["layer"]), list(item["dims"]), list(item["counts"]),
                             [[_number(v) for v in row] for row in item["peak"]],
                             [list(row) for row in item["position"]],
                             [float("inf") if v is None else float(v) for v in item["spread"]],
                             [float(v) for v in item["median"]], bool(item["constant"]))
                for item in summary.data["layers"]]
