"""Handlers of the feature requests: which SAE features fire on a prompt."""

from __future__ import annotations

from typing import Any

import numpy as np

from mechscope.engine.results import MAX_TOP_FEATURES, FeatureActivations
from mechscope.requests.kinds import FeatureActivationsRequest
from mechscope.requests.registry import (
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
from mechscope.requests.tolerance import Tolerance, matrix_problems


@handles(FeatureActivationsRequest, needs=("features",))
class FeatureActivationsHandler(Handler):
    """The top features per token are kept as arrays, the SAE's digest and the tokens as JSON."""

    def run(self, engine: Any, request: FeatureActivationsRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> FeatureActivations:
        return engine_method(engine, "feature_activations", "features")(
            request.prompt, request.sae_folder, request.site, request.top_k)

    def summarise(self, result: FeatureActivations) -> Summary:
        return Summary({"site": result.site, "sae_digest": result.sae_digest, "d_sae": int(result.d_sae),
                        "tokens": [str(t) for t in result.tokens]},
                       {"ids": np.ascontiguousarray(np.asarray(result.ids, dtype=np.int64)),  # [pos, k]
                        "values": np.ascontiguousarray(np.asarray(result.values, dtype=np.float32)),  # [pos, k]
                        "l0": np.asarray(result.l0, dtype=np.int64).reshape(-1),  # [pos]
                        "error_norm": np.asarray(result.error_norm, dtype=np.float32).reshape(-1),
                        "site_norm": np.asarray(result.site_norm, dtype=np.float32).reshape(-1)})

    def check(self, request: FeatureActivationsRequest, summary: Summary) -> None:
        if not 1 <= request.top_k <= MAX_TOP_FEATURES:
            raise ValueError(f"top_k must be in 1..{MAX_TOP_FEATURES}, got {request.top_k}")
        ids, values = need_array(summary, "ids", 2), need_array(summary, "values", 2)
        tokens = need_list(summary.data, "tokens", str, "strings")
        if ids.shape != values.shape or ids.shape[0] != len(tokens):
            raise ValueError(f"outcome: ids {list(ids.shape)}, values {list(values.shape)} and "
                             f"{len(tokens)} tokens do not agree")
        for name in ("l0", "error_norm", "site_norm"):
            if need_array(summary, name, 1).shape[0] != len(tokens):
                raise ValueError(f"outcome: array {name!r} has no value per token")
        need(summary.data, "sae_digest", str, "a string")
        need(summary.data, "site", str, "a string")

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        if recorded.data["sae_digest"] != recomputed.data["sae_digest"]:
            return [f"the SAE changed: digest {recorded.data['sae_digest'][:12]} -> "
                    f"{recomputed.data['sae_digest'][:12]}"]
        if recorded.data["tokens"] != recomputed.data["tokens"]:
            return ["the prompt's tokens differ"]
        old_ids, new_ids = (np.asarray(s.arrays["ids"], dtype=np.int64) for s in (recorded, recomputed))
        old_values, new_values = (np.asarray(s.arrays["values"], dtype=np.float64) for s in (recorded, recomputed))
        if old_ids.shape != new_ids.shape:
            return [f"top features of shape {list(new_ids.shape)}, recorded {list(old_ids.shape)}"]
        problems = matrix_problems(old_values, new_values, tolerance, "token {row} rank {col}", "activation")
        # two features within the tolerance of each other may swap ranks
        close = np.abs(old_values - new_values) <= tolerance.metric_atol + tolerance.metric_rtol * np.abs(old_values)
        moved = (old_ids != new_ids) & ~close
        if moved.any():
            pos, rank = (int(v) for v in np.argwhere(moved)[0])
            problems.append(f"token {pos}: feature at rank {rank + 1} {old_ids[pos, rank]} -> {new_ids[pos, rank]}")
        return problems

    def restore(self, request: FeatureActivationsRequest, summary: Summary) -> FeatureActivations:
        arrays, data = summary.arrays, summary.data
        return FeatureActivations(
            site=str(data["site"]), sae_digest=str(data["sae_digest"]), d_sae=int(data.get("d_sae", 0)),
            tokens=[str(t) for t in data["tokens"]], ids=np.asarray(arrays["ids"], dtype=np.int64),
            values=np.asarray(arrays["values"], dtype=np.float32), l0=np.asarray(arrays["l0"], dtype=np.int64),
            error_norm=np.asarray(arrays["error_norm"], dtype=np.float32),
            site_norm=np.asarray(arrays["site_norm"], dtype=np.float32))

    def describe(self, summary: Summary) -> str:
        """`L1.resid_post: strongest feature 17 at token 5 (2.31); mean L0 12.3`."""
        values = np.asarray(summary.arrays["values"], dtype=np.float64)
        ids = np.asarray(summary.arrays["ids"])
        l0 = np.asarray(summary.arrays["l0"], dtype=np.float64)
        site = summary.data["site"]
        if values.size == 0 or not np.isfinite(values).any() or values.max() <= 0:
            return f"{site}: no feature fires"
        pos, rank = np.unravel_index(int(np.argmax(values)), values.shape)
        return (f"{site}: strongest feature {int(ids[pos, rank])} at token {int(pos)} "
                f"({values[pos, rank]:.4f}); mean L0 {l0.mean():.1f}")
