"""Handlers of the feature requests: which SAE features fire on a prompt, attribution to them, one feature's card."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mechscope.engine.features.results import (
    MAX_ATTRIBUTED_FEATURES,
    MAX_CARD_ROWS,
    MAX_TOP_FEATURES,
    MAX_VERIFIED_FEATURES,
    FeatureActivations,
    FeatureAttribution,
    FeatureCardResult,
    SaeQuality,
)
from mechscope.requests.kinds import (
    FeatureActivationsRequest,
    FeatureAttributionRequest,
    FeatureCardRequest,
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
from mechscope.requests.tolerance import Tolerance, matrix_problems, metric_problems


@handles(FeatureActivationsRequest, needs=("features",))
class FeatureActivationsHandler(Handler):
    """The top features per token are kept as arrays, the SAE's digest and the tokens as JSON."""

    def run(self, engine: Any, request: FeatureActivationsRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> FeatureActivations:
        return engine_method(engine, "feature_activations", "features")(
            request.prompt, request.sae_folder, request.site, request.top_k)

    def summarise(self, result: FeatureActivations) -> Summary:
        return Summary({"site": result.site, "sae_digest": result.sae_digest, "d_sae": int(result.d_sae),
                        "tokens": [str(t) for t in result.tokens],
                        "quality": None if result.quality is None else result.quality.to_json()},
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
        if summary.data.get("quality") is not None:
            SaeQuality.from_json(summary.data["quality"])

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        if recorded.data["sae_digest"] != recomputed.data["sae_digest"]:
            return [f"the SAE changed: digest {recorded.data['sae_digest'][:12]} -> "
                    f"{recomputed.data['sae_digest'][:12]}"]
        if recorded.data.get("quality") != recomputed.data.get("quality"):
            return ["the quality figures beside the SAE (quality.json) changed"]
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
            site_norm=np.asarray(arrays["site_norm"], dtype=np.float32),
            quality=None if data.get("quality") is None else SaeQuality.from_json(data["quality"]))

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


CANDIDATE_INTS = ("positions", "features")  # [n] int64
CANDIDATE_FLOATS = ("activations", "estimates", "exact", "direct")  # [n] float32
PER_TOKEN = ("error_estimates", "bias_estimates", "feature_totals")  # [pos] float32


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(float(value)) else None


@handles(FeatureAttributionRequest, needs=("features",))
class FeatureAttributionHandler(Handler):
    """The ranked candidates and the per-token nodes are kept as arrays; the SAE's digest, the tokens
    and the base metric as JSON. Replay matches candidates by (position, feature): two whose
    estimates are within the tolerance may swap ranks or cross the top_n edge."""

    def run(self, engine: Any, request: FeatureAttributionRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> FeatureAttribution:
        return engine_method(engine, "feature_attribution", "features")(
            request.prompt, request.sae_folder, request.site, request.metric, request.interventions,
            request.top_n, request.verify, request.corrupted, should_stop, request.include_first)

    def summarise(self, result: FeatureAttribution) -> Summary:
        arrays: dict[str, np.ndarray] = {name: np.asarray(getattr(result, name), dtype=np.int64).reshape(-1)
                                         for name in CANDIDATE_INTS}
        for name in CANDIDATE_FLOATS + PER_TOKEN:
            arrays[name] = np.asarray(getattr(result, name), dtype=np.float32).reshape(-1)
        return Summary({"site": result.site, "sae_digest": result.sae_digest, "d_sae": int(result.d_sae),
                        "tokens": [str(t) for t in result.tokens], "metric_position": int(result.metric_position),
                        "base_metric": float(result.base_metric), "n_active": int(result.n_active),
                        "include_first": bool(result.include_first),
                        "error_exact": _finite_or_none(result.error_exact),
                        "error_direct": _finite_or_none(result.error_direct),
                        "direct_label": result.direct_label}, arrays)

    def check(self, request: FeatureAttributionRequest, summary: Summary) -> None:
        if not 1 <= request.top_n <= MAX_ATTRIBUTED_FEATURES:
            raise ValueError(f"top_n must be in 1..{MAX_ATTRIBUTED_FEATURES}, got {request.top_n}")
        if not 0 <= request.verify <= min(request.top_n, MAX_VERIFIED_FEATURES):
            raise ValueError(f"verify must be in 0..{min(request.top_n, MAX_VERIFIED_FEATURES)}, got {request.verify}")
        data = summary.data
        tokens = need_list(data, "tokens", str, "strings")
        counts = {need_array(summary, name, 1).shape[0] for name in CANDIDATE_INTS + CANDIDATE_FLOATS}
        if len(counts) != 1 or counts.pop() > request.top_n:
            raise ValueError(f"outcome: the candidate arrays differ in length or list more than {request.top_n}")
        for name in PER_TOKEN:
            if need_array(summary, name, 1).shape[0] != len(tokens):
                raise ValueError(f"outcome: array {name!r} has no value per token")
        if not 0 <= need(data, "metric_position", int, "an integer") < max(len(tokens), 1):
            raise ValueError("outcome.metric_position is outside the prompt")
        need(data, "base_metric", NUMBER, "a number")
        for key in ("error_exact", "error_direct"):
            need(data, key, (int, float, type(None)), "a number or null")
        need(data, "direct_label", (str, type(None)), "a string or null")
        need(data, "sae_digest", str, "a string")
        need(data, "site", str, "a string")

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        old, new = recorded.data, recomputed.data
        if old["sae_digest"] != new["sae_digest"]:
            return [f"the SAE changed: digest {old['sae_digest'][:12]} -> {new['sae_digest'][:12]}"]
        if old["tokens"] != new["tokens"]:
            return ["the prompt's tokens differ"]
        problems = metric_problems("base metric", old["base_metric"], new["base_metric"], tolerance)
        problems += metric_problems("error removed", old["error_exact"], new["error_exact"], tolerance)
        for name in PER_TOKEN:
            problems += matrix_problems(recorded.arrays[name][None], recomputed.arrays[name][None], tolerance,
                                        "token {col}", name.replace("_", " "))
        return problems + _candidate_problems(recorded, recomputed, tolerance)

    def restore(self, request: FeatureAttributionRequest, summary: Summary) -> FeatureAttribution:
        data, arrays = summary.data, summary.arrays
        values: dict[str, Any] = {name: np.asarray(arrays[name], dtype=np.int64) for name in CANDIDATE_INTS}
        for name in CANDIDATE_FLOATS + PER_TOKEN:
            values[name] = np.asarray(arrays[name], dtype=np.float32)
        error_exact, error_direct = data.get("error_exact"), data.get("error_direct")
        return FeatureAttribution(
            site=str(data["site"]), sae_digest=str(data["sae_digest"]), d_sae=int(data.get("d_sae", 0)),
            tokens=[str(t) for t in data["tokens"]], metric_position=int(data["metric_position"]),
            base_metric=float(data["base_metric"]), n_active=int(data.get("n_active", 0)),
            include_first=bool(data.get("include_first", False)),
            error_exact=float("nan") if error_exact is None else float(error_exact),
            error_direct=float("nan") if error_direct is None else float(error_direct),
            direct_label=data.get("direct_label"), **values)

    def describe(self, summary: Summary) -> str:
        """`L1.resid_post: 464 active; top feature 13 at token 13 ' to': AtP +0.3211, exact +0.4012;
        error node -0.0123; 10 verified`."""
        data, arrays = summary.data, summary.arrays
        error = float(np.nansum(np.asarray(arrays["error_estimates"], dtype=np.float64)))
        if arrays["features"].shape[0] == 0:
            return f"{data['site']}: no feature fires; error node {error:+.4f}"
        pos, feature = int(arrays["positions"][0]), int(arrays["features"][0])
        exact = float(arrays["exact"][0])
        token = data["tokens"][pos] if 0 <= pos < len(data["tokens"]) else "?"
        verified = int(np.isfinite(np.asarray(arrays["exact"], dtype=np.float64)).sum())
        return (f"{data['site']}: {data.get('n_active', 0)} active; top feature {feature} at token {pos} "
                f"{token!r}: AtP {float(arrays['estimates'][0]):+.4f}"
                + (f", exact {exact:+.4f}" if math.isfinite(exact) else "")
                + f"; error node {error:+.4f}; {verified} verified")

    def short(self, summary: Summary) -> str:
        """`f13@13 AtP +0.3211`."""
        arrays = summary.arrays
        if arrays["features"].shape[0] == 0:
            return "no feature fires"
        return (f"f{int(arrays['features'][0])}@{int(arrays['positions'][0])} "
                f"AtP {float(arrays['estimates'][0]):+.4f}")


def _candidate_problems(recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
    """Candidates matched by (position, feature): their values within the tolerance (exact where both
    verified it), and one listed on one side only no stronger than the other side's weakest listed
    estimate allows."""
    def table(summary: Summary) -> dict[tuple[int, int], tuple[float, ...]]:
        a = summary.arrays
        columns = [np.asarray(a[name], dtype=np.float64) for name in CANDIDATE_FLOATS]
        return {(int(p), int(f)): tuple(float(c[i]) for c in columns)
                for i, (p, f) in enumerate(zip(a["positions"], a["features"]))}

    old, new = table(recorded), table(recomputed)

    def close(a: float, b: float) -> bool:
        return not (math.isfinite(a) and math.isfinite(b)) or tolerance.metric_close(a, b)

    for key in sorted(old.keys() & new.keys(), key=lambda k: -abs(old[k][1])):
        for name, a, b in zip(CANDIDATE_FLOATS, old[key], new[key]):
            if not close(a, b):
                return [f"token {key[0]} feature {key[1]}: {name} {a:+.6f} -> {b:+.6f}"]
    for mine, other, verb in ((old, new, "dropped"), (new, old, "appeared")):
        edge = min((abs(v[1]) for v in other.values()), default=0.0)
        for key in mine.keys() - other.keys():
            if len(other) and abs(mine[key][1]) > edge + tolerance.metric_atol + tolerance.metric_rtol * edge:
                return [f"token {key[0]} feature {key[1]} (AtP {mine[key][1]:+.6f}) {verb} from the top candidates"]
    return []


@handles(FeatureCardRequest, needs=("features",))
class FeatureCardHandler(Handler):
    """A card keeps its numbers as arrays (context activations, promoted / suppressed logits) and its
    texts, density and the SAE's digest as JSON."""

    def run(self, engine: Any, request: FeatureCardRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> FeatureCardResult:
        return engine_method(engine, "feature_card", "features")(
            request.sae_folder, request.feature, request.site, request.k)

    def summarise(self, result: FeatureCardResult) -> Summary:
        return Summary({"site": result.site, "sae_digest": result.sae_digest, "d_sae": int(result.d_sae),
                        "feature": int(result.feature), "indexed": bool(result.indexed),
                        "index_tokens": int(result.index_tokens),
                        "density": None if result.density is None else float(result.density),
                        "context_tokens": [[str(t) for t in c] for c in result.context_tokens],
                        "context_at": [int(a) for a in result.context_at],
                        "promoted": [str(t) for t in result.promoted],
                        "suppressed": [str(t) for t in result.suppressed]},
                       {"context_values": np.asarray(result.context_values, dtype=np.float32).reshape(-1),  # [n]
                        "promoted_logits": np.asarray(result.promoted_logits, dtype=np.float32).reshape(-1),  # [k]
                        "suppressed_logits": np.asarray(result.suppressed_logits, dtype=np.float32).reshape(-1)})

    def check(self, request: FeatureCardRequest, summary: Summary) -> None:
        if not 1 <= request.k <= MAX_CARD_ROWS:
            raise ValueError(f"k must be in 1..{MAX_CARD_ROWS}, got {request.k}")
        for name in ("site", "sae_digest"):
            need(summary.data, name, str, "a string")
        for name in ("d_sae", "feature", "index_tokens"):
            need(summary.data, name, int, "an integer")
        need(summary.data, "indexed", bool, "a boolean")
        density = summary.data.get("density")
        if density is not None and (isinstance(density, bool) or not isinstance(density, (int, float))):
            raise ValueError("outcome.density must be a number or null")
        contexts = need(summary.data, "context_tokens", list, "a list of token lists")
        if not all(isinstance(c, list) and all(isinstance(t, str) for t in c) for c in contexts):
            raise ValueError("outcome.context_tokens must be a list of token lists")
        at = need_list(summary.data, "context_at", int, "integers")
        if need_array(summary, "context_values", 1).shape[0] != len(contexts) or len(at) != len(contexts):
            raise ValueError("outcome: context activations, tokens and positions do not agree")
        for side in ("promoted", "suppressed"):
            tokens = need_list(summary.data, side, str, "strings")
            if need_array(summary, f"{side}_logits", 1).shape[0] != len(tokens):
                raise ValueError(f"outcome: {side} tokens and logits do not agree")
        if len(contexts) > MAX_CARD_ROWS or len(summary.data["promoted"]) > MAX_CARD_ROWS:
            raise ValueError(f"outcome: more than {MAX_CARD_ROWS} rows")

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        old, new = recorded.data, recomputed.data
        if old["sae_digest"] != new["sae_digest"]:
            return [f"the SAE changed: digest {old['sae_digest'][:12]} -> {new['sae_digest'][:12]}"]
        problems = []
        if (old["indexed"], old["index_tokens"], old["context_tokens"], old["context_at"]) != (
                new["indexed"], new["index_tokens"], new["context_tokens"], new["context_at"]) \
                or not tolerance.metric_close(old["density"], new["density"]):
            problems.append("the feature index beside the SAE changed")
        problems += matrix_problems(recorded.arrays["context_values"], recomputed.arrays["context_values"],
                                    tolerance, label="context activations")
        for side in ("promoted", "suppressed"):
            old_logits = np.asarray(recorded.arrays[f"{side}_logits"], dtype=np.float64)
            new_logits = np.asarray(recomputed.arrays[f"{side}_logits"], dtype=np.float64)
            problems += matrix_problems(old_logits, new_logits, tolerance, label=f"{side} logits")
            if old_logits.shape == new_logits.shape:
                # two tokens within the tolerance of each other may swap ranks
                close = np.abs(old_logits - new_logits) <= tolerance.metric_atol + tolerance.metric_rtol * np.abs(old_logits)
                moved = [i for i, (a, b) in enumerate(zip(old[side], new[side])) if a != b and not close[i]]
                if moved:
                    problems.append(f"{side} token at rank {moved[0] + 1}: {old[side][moved[0]]!r} -> "
                                    f"{new[side][moved[0]]!r}")
        return problems

    def restore(self, request: FeatureCardRequest, summary: Summary) -> FeatureCardResult:
        data, arrays = summary.data, summary.arrays
        density = data.get("density")
        return FeatureCardResult(
            site=str(data["site"]), sae_digest=str(data["sae_digest"]), d_sae=int(data["d_sae"]),
            feature=int(data["feature"]), indexed=bool(data["indexed"]), index_tokens=int(data["index_tokens"]),
            density=None if density is None else float(density),
            context_values=np.asarray(arrays["context_values"], dtype=np.float32),
            context_tokens=[[str(t) for t in c] for c in data["context_tokens"]],
            context_at=[int(a) for a in data["context_at"]], promoted=[str(t) for t in data["promoted"]],
            promoted_logits=np.asarray(arrays["promoted_logits"], dtype=np.float32),
            suppressed=[str(t) for t in data["suppressed"]],
            suppressed_logits=np.asarray(arrays["suppressed_logits"], dtype=np.float32))

    def describe(self, summary: Summary) -> str:
        """`L1.resid_post feature 17: fires on 0.84% of 50000 indexed tokens; promotes ' Mary' (+1.23)`."""
        data = summary.data
        density = data.get("density")
        where = (f"fires on {100 * density:.2f}% of {data['index_tokens']} indexed tokens" if density is not None
                 else "no index")
        promoted = data["promoted"]
        logits = np.asarray(summary.arrays["promoted_logits"], dtype=np.float64)
        top = f"; promotes {promoted[0]!r} ({logits[0]:+.4f})" if promoted and logits.size else ""
        return f"{data['site']} feature {data['feature']}: {where}{top}"
