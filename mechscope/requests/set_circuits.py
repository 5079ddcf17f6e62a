"""Handlers of the circuit requests over a prompt set: function vectors, a head's attention between
the set's roles, and the name-mover / S-inhibition grids."""

from __future__ import annotations

from typing import Any

import numpy as np

from mechscope.engine.results import FunctionVectorResult, HeadScores, RoleAttention
from mechscope.requests.kinds import FunctionVectorRequest, RoleHeadsRequest, SetAttentionRequest
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
from mechscope.requests.sets import HeadGridsHandler
from mechscope.requests.tolerance import Tolerance, list_problems, matrix_problems

FV_ROWS = ("base_prob", "correct_without", "correct_with", "prob_without", "prob_with")  # [row] arrays


def _f32(values: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=np.float32))


@handles(FunctionVectorRequest, needs=("prompt_sets", "vectors"))
class FunctionVectorHandler(Handler):
    """The AIE grid, the chosen heads (exactly), the vector and the per-row zero-shot results; the
    provenance (set, heads, layer) is in the request and the summary."""

    def run(self, engine: Any, request: FunctionVectorRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> FunctionVectorResult:
        if not request.name.strip():
            raise ValueError("a function vector needs a name")
        return engine_method(engine, "function_vector", "prompt_sets")(
            request.pset, request.layer, request.top_heads, request.coeff, request.name,
            should_stop=should_stop)

    def summarise(self, result: FunctionVectorResult) -> Summary:
        return Summary({"set": result.set_name, "name": result.name, "layer": int(result.layer),
                        "coeff": float(result.coeff), "heads": [[int(layer), int(head)] for layer, head in result.heads],
                        "accuracy_without": result.accuracy_without, "accuracy_with": result.accuracy_with},
                       {"aie": _f32(result.aie), "vector": _f32(result.vector).reshape(-1),
                        **{name: _f32(getattr(result, name)).reshape(-1) for name in FV_ROWS}})

    def check(self, request: FunctionVectorRequest, summary: Summary) -> None:
        layers, heads = need_array(summary, "aie", 2).shape
        need_array(summary, "vector", 1)
        for item in need(summary.data, "heads", list, "a list"):
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(v, int) for v in item)
                    and 0 <= item[0] < layers and 0 <= item[1] < heads):
                raise ValueError("outcome.heads must hold [layer, head] of heads in the grid")
        for name in FV_ROWS:
            if need_array(summary, name, 1).shape[0] != len(request.pset):
                raise ValueError(f"array {name!r} does not have one value per row")
        need(summary.data, "accuracy_with", NUMBER, "a number")
        need(summary.data, "accuracy_without", NUMBER, "a number")

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        problems = matrix_problems(recorded.arrays["aie"], recomputed.arrays["aie"], tolerance, "L{row}.H{col}", "AIE")
        if recorded.data["heads"] != recomputed.data["heads"]:
            problems.append(f"top heads {recorded.data['heads']} -> {recomputed.data['heads']}")
        problems += matrix_problems(recorded.arrays["vector"][None], recomputed.arrays["vector"][None],
                                    tolerance, label="vector")
        for name in FV_ROWS:
            problems += list_problems(name, recorded.arrays[name].tolist(), recomputed.arrays[name].tolist(),
                                      tolerance)
        return problems

    def describe(self, summary: Summary) -> str:
        data = summary.data
        heads = " ".join(f"L{layer}.H{head}" for layer, head in data["heads"][:5])
        more = "…" if len(data["heads"]) > 5 else ""
        return (f"function vector {data['name']!r} at L{data['layer']} from {heads}{more}: zero-shot accuracy "
                f"{data['accuracy_without']:.0%} -> {data['accuracy_with']:.0%} (x{data['coeff']:g})")

    def short(self, summary: Summary) -> str:
        data = summary.data
        return f"fv {data['accuracy_without']:.0%}->{data['accuracy_with']:.0%}"

    def restore(self, request: FunctionVectorRequest, summary: Summary) -> FunctionVectorResult:
        data, arrays = summary.data, summary.arrays
        def row(name: str) -> np.ndarray:
            return np.asarray(arrays[name], dtype=np.float64)  # [row]

        return FunctionVectorResult(str(data["set"]), str(data["name"]), int(data["layer"]), float(data["coeff"]),
                                    np.asarray(arrays["aie"], dtype=np.float64),
                                    tuple((int(layer), int(head)) for layer, head in data["heads"]),
                                    np.asarray(arrays["vector"], dtype=np.float32).copy(), row("base_prob"),
                                    row("correct_without"), row("correct_with"), row("prob_without"),
                                    row("prob_with"))


@handles(SetAttentionRequest, needs=("prompt_sets",))
class SetAttentionHandler(Handler):
    """The role names (exactly) and the role x role mean and spread."""

    def run(self, engine: Any, request: SetAttentionRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> RoleAttention:
        return engine_method(engine, "set_attention", "prompt_sets")(request.pset, request.layer, request.head)

    def summarise(self, result: RoleAttention) -> Summary:
        return Summary({"set": result.set_name, "layer": int(result.layer), "head": int(result.head),
                        "roles": list(result.roles), "rows": int(result.rows)},
                       {"mean": _f32(result.mean), "std": _f32(result.std)})

    def check(self, request: SetAttentionRequest, summary: Summary) -> None:
        roles = need_list(summary.data, "roles", str, "names")
        for name in ("mean", "std"):
            if need_array(summary, name, 2).shape != (len(roles), len(roles)):
                raise ValueError(f"array {name!r} must be {len(roles)} x {len(roles)} (one row and column per role)")
        need(summary.data, "rows", int, "an integer")

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        if recorded.data["roles"] != recomputed.data["roles"]:
            return [f"roles {recorded.data['roles']} -> {recomputed.data['roles']}"]
        return [problem for name in ("mean", "std") for problem in matrix_problems(
            recorded.arrays[name], recomputed.arrays[name], tolerance, "role {row}->role {col}", name)]

    def describe(self, summary: Summary) -> str:
        data = summary.data
        roles, mean = data["roles"], np.asarray(summary.arrays["mean"], dtype=np.float64)
        last = len(roles) - 1
        parts = ", ".join(f"{roles[last]}->{roles[k]} {mean[last, k]:.3f}" for k in range(last))
        return f"L{data['layer']}.H{data['head']} over {data['rows']} rows: {parts}"

    def restore(self, request: SetAttentionRequest, summary: Summary) -> RoleAttention:
        data = summary.data
        return RoleAttention(str(data["set"]), int(data["layer"]), int(data["head"]), tuple(data["roles"]),
                             np.asarray(summary.arrays["mean"], dtype=np.float64),
                             np.asarray(summary.arrays["std"], dtype=np.float64), int(data["rows"]))


@handles(RoleHeadsRequest, needs=("prompt_sets", "head_detectors"))
class RoleHeadsHandler(HeadGridsHandler):
    """One [layer, head] grid per role detector, as the head detectors keep theirs."""

    def run(self, engine: Any, request: RoleHeadsRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> HeadScores:
        return engine_method(engine, "detect_role_heads", "head_detectors")(request.pset)
