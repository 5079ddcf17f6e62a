"""Handlers of the single-prompt requests: run, validate, sweep, generate, steering vectors and
reference prompts."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from mechscope.engine.results import SweepResult
from mechscope.requests.kinds import (
    AddVectorRequest,
    BuildVectorRequest,
    GenerateRequest,
    ReferencePromptsRequest,
    RunRequest,
    SweepRequest,
    ValidateRequest,
)
from mechscope.requests.registry import (
    NUMBER,
    Handler,
    OnPartial,
    ShouldStop,
    Summary,
    handles,
    need,
    need_array,
    need_list,
)
from mechscope.requests.tolerance import (
    Tolerance,
    compare_outcomes,
    format_sweep,
    matrix_problems,
    metric_problems,
)

MAX_TOP_K = 10_000
MAX_NEW_TOKENS = 100_000


def _finite_or_none(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


@handles(RunRequest, needs=("run",))
class RunHandler(Handler):
    """Top-k and metrics are what a session keeps of a run; views are recomputed when shown."""

    def run(self, engine: Any, request: RunRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> Any:
        return engine.run(request.prompt, request.interventions, views=request.views,
                          metric=request.metric, corrupted=request.corrupted, top_k=request.top_k,
                          should_stop=should_stop)

    def summarise(self, result: Any) -> Summary:
        return Summary({
            "top_ids": [int(tok.id) for tok in result.top],
            "top_tokens": [str(tok.text) for tok in result.top],
            "top_probs": [float(tok.prob) for tok in result.top],
            "metric": _finite_or_none(result.metric),
            "baseline_metric": _finite_or_none(result.baseline.metric),
            "source_metric": _finite_or_none(result.source_metric),
        })

    def check(self, request: RunRequest, summary: Summary) -> None:
        if not 0 <= request.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in 0..{MAX_TOP_K}, got {request.top_k}")
        data = summary.data
        ids = need_list(data, "top_ids", int, "token ids")
        texts = need_list(data, "top_tokens", str, "strings")
        probs = need_list(data, "top_probs", NUMBER, "numbers")
        if not len(ids) == len(texts) == len(probs):
            raise ValueError("outcome: top_ids, top_tokens and top_probs differ in length")
        for key in ("metric", "baseline_metric"):
            need(data, key, (int, float, type(None)), "a number or null")
        if "source_metric" in data:
            need(data, "source_metric", (int, float, type(None)), "a number or null")

    def inputs(self, request: RunRequest) -> tuple[str, str | None, Any]:
        return request.prompt, request.corrupted, request.metric

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        return compare_outcomes(recorded.data, recomputed.data, tolerance)

    def describe(self, summary: Summary) -> str:
        """`' Mary' 0.4123, ' John' 0.2011, ' the' 0.1000; metric +1.2345`."""
        data = summary.data
        tops = ", ".join(f"{text!r} {prob:.4f}" for text, prob in
                         zip(data["top_tokens"][:3], data["top_probs"][:3]))
        return tops if data.get("metric") is None else f"{tops}; metric {data['metric']:+.4f}"

    def short(self, summary: Summary) -> str:
        """`' Mary' 0.4123 | +1.2345` (top-1 | metric)."""
        data = summary.data
        if not data["top_ids"]:
            return self.describe(summary)
        head = f"{data['top_tokens'][0]!r} {data['top_probs'][0]:.4f}"
        return head if data.get("metric") is None else f"{head} | {data['metric']:+.4f}"


@handles(ValidateRequest, needs=("run",))
class ValidateHandler(Handler):
    def run(self, engine: Any, request: ValidateRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> None:
        engine.validate(request.interventions, request.prompt, request.corrupted)

    def describe(self, summary: Summary) -> str:
        return "the interventions fit the prompt"


@handles(SweepRequest, needs=("sweep",))
class SweepHandler(Handler):
    """The sweep matrix is kept as an array; base and source metric and labels as JSON."""

    def run(self, engine: Any, request: SweepRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> Any:
        on_top: dict[str, Any] = {"interventions": request.interventions} if request.interventions else {}
        if request.head_input != "output":
            on_top["head_input"] = request.head_input
        return engine.sweep(request.sweep_kind, request.clean, request.corrupt, request.metric,
                            direction=request.direction, on_progress=on_partial,
                            should_stop=should_stop, **on_top)

    def needs_of(self, request: SweepRequest) -> tuple[str, ...]:
        return self.needs + (("attention_inputs",) if request.head_input != "output" else ())

    def summarise(self, result: Any) -> Summary:
        values = np.ascontiguousarray(np.asarray(result.values, dtype=np.float32))  # [layer, head|pos]
        return Summary({"sweep": str(result.kind), "base_metric": float(result.base_metric),
                        "source_metric": _finite_or_none(result.source_metric),
                        "complete": bool(result.complete),
                        "row_labels": [str(x) for x in result.row_labels],
                        "col_labels": [str(x) for x in result.col_labels]}, {"values": values})

    def check(self, request: SweepRequest, summary: Summary) -> None:
        values = need_array(summary, "values", 2)
        need(summary.data, "base_metric", NUMBER, "a number")
        for key, axis in (("row_labels", 0), ("col_labels", 1)):
            labels = summary.data.get(key)
            if labels and len(labels) != values.shape[axis]:
                raise ValueError(f"outcome.{key} has {len(labels)} labels for {values.shape[axis]} "
                                 f"{'rows' if axis == 0 else 'columns'}")

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        return (metric_problems("base metric", recorded.data["base_metric"],
                                recomputed.data["base_metric"], tolerance)
                + matrix_problems(recorded.arrays["values"], recomputed.arrays["values"], tolerance))

    def describe(self, summary: Summary) -> str:
        return format_sweep(summary.arrays["values"], summary.data["base_metric"],
                            _finite_or_none(summary.data.get("source_metric")))

    def restore_key(self, request: SweepRequest) -> str:
        return f"sweep {request.sweep_kind}"

    def restore(self, request: SweepRequest, summary: Summary) -> Any:
        values = np.asarray(summary.arrays["values"], dtype=np.float32)  # [layer, head|pos]
        data = summary.data
        source = data.get("source_metric")
        return SweepResult(request.sweep_kind, values, float(data["base_metric"]),
                           float("nan") if source is None else float(source),
                           [str(x) for x in data.get("row_labels") or range(values.shape[0])],
                           [str(x) for x in data.get("col_labels") or range(values.shape[1])],
                           bool(data.get("complete", True)), 0.0)


@handles(GenerateRequest, needs=("generate",))
class GenerateHandler(Handler):
    """Token ids are compared exactly; replay never asks for more tokens than were recorded."""

    def run(self, engine: Any, request: GenerateRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> Any:
        return engine.generate(request.prompt, request.interventions,
                               max_new_tokens=request.max_new_tokens,
                               temperature=request.temperature, seed=request.seed,
                               corrupted=request.corrupted, on_token=on_partial,
                               should_stop=should_stop)

    def summarise(self, result: Any) -> Summary:
        return Summary({"token_ids": [int(t.id) for t in result], "tokens": [str(t.text) for t in result]})

    def check(self, request: GenerateRequest, summary: Summary) -> None:
        if not 0 <= request.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be in 0..{MAX_NEW_TOKENS}, got {request.max_new_tokens}")
        ids = need_list(summary.data, "token_ids", int, "token ids")
        if len(ids) != len(need_list(summary.data, "tokens", str, "strings")):
            raise ValueError("outcome: token_ids and tokens differ in length")
        if len(ids) > request.max_new_tokens:
            raise ValueError("more tokens recorded than max_new_tokens allows")

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        old, new = list(recorded.data["token_ids"]), list(recomputed.data["token_ids"])
        if old == new:
            return []
        first = next((i for i, (a, b) in enumerate(zip(new, old)) if a != b), min(len(new), len(old)))
        return [f"tokens differ from position {first}"]

    def describe(self, summary: Summary) -> str:
        """`12 tokens ' Mary. The cat'`."""
        return f"{len(summary.data['token_ids'])} tokens {''.join(summary.data['tokens'])!r}"

    def bounded(self, request: GenerateRequest, recorded: Summary) -> GenerateRequest:
        """Only the recorded tokens are compared, so never generate more than were recorded (a crafted
        max_new_tokens would otherwise run for hours)."""
        return dataclasses.replace(request, max_new_tokens=min(request.max_new_tokens,
                                                               len(recorded.data["token_ids"])))

    def for_replay(self, engine: Any, request: GenerateRequest, recorded: Summary) -> GenerateRequest:
        """The bounded request; one past the model's context is refused."""
        request = self.bounded(request, recorded)
        max_new_tokens = request.max_new_tokens
        context = int(engine.info.max_context)
        prompt_tokens = min(len(engine.tokenize(request.prompt)[0]), context)
        if prompt_tokens + max_new_tokens > context:
            raise ValueError(f"{max_new_tokens} new tokens after a {prompt_tokens}-token prompt do not "
                             f"fit the model's context of {context} tokens")
        return request


class _VectorHandler(Handler):
    """A steering vector is kept as an array and compared value by value."""

    def summarise(self, result: Any) -> Summary:
        vector = np.ascontiguousarray(np.asarray(result, dtype=np.float32).reshape(-1))  # [d_model]
        return Summary({"norm": float(np.linalg.norm(vector.astype(np.float64)))}, {"vector": vector})

    def check(self, request: Any, summary: Summary) -> None:
        if need_array(summary, "vector", 1).shape[0] == 0:
            raise ValueError("a steering vector needs at least one value")
        need(summary.data, "norm", NUMBER, "a number")

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        return matrix_problems(recorded.arrays["vector"], recomputed.arrays["vector"], tolerance,
                               label="vector")

    def describe(self, summary: Summary) -> str:
        return f"vector [{summary.arrays['vector'].shape[0]}] norm {summary.data['norm']:.4f}"

    def restore(self, request: Any, summary: Summary) -> Any:
        return np.asarray(summary.arrays["vector"], dtype=np.float32).copy()


@handles(BuildVectorRequest, needs=("vectors",))
class BuildVectorHandler(_VectorHandler):
    def run(self, engine: Any, request: BuildVectorRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> Any:
        return engine.build_steering_vector(request.name, request.layer, request.positive,
                                            request.negative)


@handles(AddVectorRequest, needs=("vectors",))
class AddVectorHandler(_VectorHandler):
    def run(self, engine: Any, request: AddVectorRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> Any:
        engine.add_vector(request.name, request.vector)
        return engine.vectors[request.name]


@handles(ReferencePromptsRequest, needs=("reference_prompts",))
class ReferencePromptsHandler(Handler):
    def run(self, engine: Any, request: ReferencePromptsRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> None:
        engine.set_reference_prompts(request.prompts)

    def describe(self, summary: Summary) -> str:
        return "reference prompts set"
