"""Plain-data results that cross out of the engine: numpy arrays and dataclasses, never tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """What the UI shows about the resident model."""

    source: str
    name: str
    architecture: str
    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    vocab_size: int
    max_context: int
    device: str
    dtype: str
    placement: str = ""  # where the layers live under a device map, e.g. "cuda:0 L0–15 · disk L16–29"


@dataclass(frozen=True)
class TokenProb:
    id: int
    text: str
    prob: float
    logit: float


@dataclass(frozen=True)
class MetricInfo:
    """How the metric's tokens were read: multi-token strings count by their first token."""

    kind: str
    target_text: str
    target_ids: tuple[int, ...]
    target_pieces: tuple[str, ...]
    foil_text: str
    foil_ids: tuple[int, ...]
    foil_pieces: tuple[str, ...]
    position: int

    @property
    def target_id(self) -> int:
        return self.target_ids[0]

    @property
    def foil_id(self) -> int | None:
        return self.foil_ids[0] if self.foil_ids else None

    @property
    def warnings(self) -> list[str]:
        out = []
        for label, text, pieces in (
            ("target", self.target_text, self.target_pieces),
            ("foil", self.foil_text, self.foil_pieces),
        ):
            if len(pieces) > 1:
                out.append(
                    f"{label} {text!r} is {len(pieces)} tokens {list(pieces)}; only {pieces[0]!r} counts"
                )
        return out


@dataclass(frozen=True)
class LogitLens:
    """Each layer's residual (after the layer) decoded through the final norm and unembedding.

    `top_ids`/`top_probs` are [n_layers, k]; `target_rank` (0 = top-1) and `target_prob` are
    [n_layers] when a metric target is set. `critical_layer` is the first layer from which the
    target stays top-1, or None.
    """

    position: int
    top_ids: np.ndarray  # [layer, k]
    top_tokens: list[list[str]]
    top_probs: np.ndarray  # [layer, k]
    target_rank: np.ndarray | None  # [layer]
    target_prob: np.ndarray | None  # [layer]

    @property
    def critical_layer(self) -> int | None:
        if self.target_rank is None:
            return None
        top1 = self.target_rank == 0
        if not top1[-1]:
            return None
        layer = len(top1) - 1
        while layer > 0 and top1[layer - 1]:
            layer -= 1
        return int(layer)


@dataclass(frozen=True)
class Attribution:
    """Direct logit attribution to the metric direction at `position`.

    The final norm's scale is frozen from the run (the standard linearisation): each component's
    write to the residual stream is passed through the norm as if the norm divided by the scale it
    computed on the full residual. With LayerNorm the mean is removed from each component; the
    norm's own bias is a separate term; what steering vectors and residual patches write directly
    is `resid_edits`. The parts add up to `total`, the metric direction's logit
    (target - foil, or the target logit) before any final logit soft-capping.
    """

    position: int
    direction: str
    heads: np.ndarray  # [layer, head]
    attn_bias: np.ndarray  # [layer] output-projection bias (and anything not split into heads)
    mlp: np.ndarray  # [layer]
    embed: float
    final_bias: float  # final-norm bias plus unembedding bias
    total: float
    resid_edits: np.ndarray | None = None  # [layer] steering vectors / residual patches written there

    def parts_sum(self) -> float:
        edits = 0.0 if self.resid_edits is None else float(self.resid_edits.sum())
        return float(
            self.heads.sum() + self.attn_bias.sum() + self.mlp.sum() + self.embed + self.final_bias
            + edits
        )

    def top_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The k heads with the largest absolute attribution, as (layer, head, value)."""
        flat = np.argsort(-np.abs(self.heads), axis=None)[:k]
        n_heads = self.heads.shape[1]
        return [(int(i // n_heads), int(i % n_heads), float(self.heads.flat[i])) for i in flat]


@dataclass(frozen=True)
class ActivationStats:
    """Residual-stream statistics after each layer.

    `resid_norm` is [layer, pos] (L2 norm per token); `top` lists the largest absolute
    activations as (layer, pos, dim, value), the "massive activations".
    """

    resid_norm: np.ndarray  # [layer, pos]
    top: list[tuple[int, int, int, float]]
    median_abs: float


@dataclass(frozen=True)
class ComputeInfo:
    seconds: float
    mode: Literal["full", "incremental", "cached"]
    start_layer: int


@dataclass(frozen=True)
class Prediction:
    """Next-token prediction at the readout position: top-k and the metric."""

    top: list[TokenProb]
    logits: np.ndarray  # [vocab] at the readout position, float32
    metric: float | None
    # None: `logits` is exact over the vocabulary. n: a served run that did not ask for `Views.logits`
    # sent the n most likely logits exactly and the others as one value sharing the probability left.
    logits_kept: int | None = None


@dataclass
class RunResult:
    """Everything one `Engine.run` returns. Views not requested are None."""

    prompt: str
    token_ids: list[int]
    tokens: list[str]
    prediction: Prediction
    baseline: Prediction  # the same prompt with no interventions
    metric_info: MetricInfo | None
    interventions: list[dict] = field(default_factory=list)
    token_logprobs: np.ndarray | None = None  # [pos]; entry 0 is nan
    attention: dict[str, np.ndarray] = field(default_factory=dict)  # "L9.H3" -> [query, key]
    sink_scores: np.ndarray | None = None  # [layer, head]
    logit_lens: LogitLens | None = None
    attribution: Attribution | None = None
    stats: ActivationStats | None = None
    compute: ComputeInfo | None = None
    truncated_from: int | None = None  # original token count when the prompt was cut to fit

    @property
    def top(self) -> list[TokenProb]:
        return self.prediction.top

    @property
    def metric(self) -> float | None:
        return self.prediction.metric

    @property
    def logits(self) -> np.ndarray:
        return self.prediction.logits


SweepKind = Literal["head", "resid", "attn", "mlp", "atp"]
SWEEP_KINDS: tuple[SweepKind, ...] = get_args(SweepKind)


@dataclass(frozen=True)
class SweepResult:
    """A patching sweep: `values` is the metric change per variant (patched - base)."""

    kind: SweepKind
    values: np.ndarray  # head/atp: [layer, head]; resid/attn/mlp: [layer, pos]
    base_metric: float
    source_metric: float
    row_labels: list[str]
    col_labels: list[str]
    complete: bool
    seconds: float


@dataclass(frozen=True)
class PathPatchResult:
    """A path patch: the metric of the base run, of the run where the sender's change reached only
    `receivers`, and of the source run (so the effect and the normalised effect can be shown)."""

    sender: str
    receivers: tuple[str, ...]
    base_metric: float
    patched_metric: float
    source_metric: float
    seconds: float = 0.0

    @property
    def effect(self) -> float:
        """patched - base."""
        return self.patched_metric - self.base_metric


@dataclass(frozen=True)
class GeneratedToken:
    id: int
    text: str
    prob: float


# Head detectors (`mechscope.engine.detectors` computes them); the help screen shows the definitions.
DEFINITIONS: dict[str, str] = {
    "previous_token": (
        "Previous-token: mean attention from each position t >= 1 to position t-1, over the "
        "natural-text probes."),
    "duplicate_token": (
        "Duplicate-token: on sequences of N random tokens repeated twice, mean attention from each "
        "position t of the second copy to the earlier occurrence of its own token (t - N)."),
    "induction": (
        "Induction: on the same repeated random tokens, mean attention from each position t of the "
        "second copy to the token after the earlier occurrence of its own token (t - N + 1)."),
    "first_token_sink": (
        "First-token sink: mean attention from each position t >= 1 to position 0, over the "
        "natural-text probes."),
    "copy_suppression": (
        "Copy suppression: over the natural-text probes and positions t >= 1, "
        "-sum_{1<=k<=t} A[t,k] * (l_t(x_k) - mean_v l_t(v)), where l_t(v) = u_v . J_t o(t) is the "
        "head's direct effect on the logit of token v at t: o(t) the head's output written to the "
        "residual (output projection of its z, no bias, before any post-attention norm), J_t the "
        "Jacobian of the final norm at the run's final residual x_t, u_v the unembedding row of v. "
        "Positive: the head lowers the logits of the tokens it attends to (more than the vocabulary "
        "average); the first position (the usual attention sink) is left out."),
}
DETECTORS: tuple[str, ...] = tuple(DEFINITIONS)


# ---------------------------------------------------------------------------- over prompt sets


@dataclass
class SetRunResult:
    """Metric per row of a set, without (`baseline`) and with (`values`) the interventions."""

    set_name: str
    kind: str
    values: np.ndarray  # [row]
    baseline: np.ndarray  # [row]
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    @property
    def std(self) -> float:
        return float(self.values.std())

    @property
    def effect(self) -> np.ndarray:
        return self.values - self.baseline


@dataclass
class SetSweepResult:
    """Head-patching effect metric(patched) - metric(base) per row ([row, layer, head]), its mean and
    spread over the rows ([layer, head]), and the base / source metric per row."""

    set_name: str
    direction: str
    per_row: np.ndarray
    base_metric: np.ndarray
    source_metric: np.ndarray
    complete: bool = True
    seconds: float = 0.0

    @property
    def mean(self) -> np.ndarray:
        return self.per_row.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.per_row.std(axis=0)


@dataclass
class Estimate:
    """One estimator's values per row ([row, layer, head]) and its wall time."""

    method: str
    per_row: np.ndarray
    seconds: float

    @property
    def mean(self) -> np.ndarray:
        return self.per_row.mean(axis=0)


@dataclass
class HeadScores:
    """One [layer, head] grid per detector (`scores[name]`), with the definitions the help shows."""

    scores: dict[str, np.ndarray]
    cached: bool = False

    def top(self, name: str, k: int = 5) -> list[tuple[int, int, float]]:
        grid = self.scores[name]
        order = np.argsort(-grid.ravel())[:k]
        return [(int(i // grid.shape[1]), int(i % grid.shape[1]), float(grid.ravel()[i])) for i in order]

    def to_dict(self) -> dict:
        return {name: grid.tolist() for name, grid in self.scores.items()}


@dataclass
class MassiveLayer:
    """Massive dimensions of one layer's output residual over the prompts.

    A dimension d is massive in a prompt when max over positions |h[t, d]| > ratio x the median |h|
    over every position and dimension of that layer in that prompt. dims: massive in at least one
    prompt; counts[i]: in how many prompts dims[i] is; peak[i][p]: the signed value of largest
    magnitude of dims[i] in prompt p (NaN where it is not massive); position[i][p]: where it is (-1
    where it is not massive); spread[i]: std / |mean| of peak[i] over the prompts where it is massive;
    median[p]: the layer's median |h| in prompt p. constant: the same dims are massive in every prompt and each spread < tol.
    """

    layer: int
    dims: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    peak: list[list[float]] = field(default_factory=list)
    position: list[list[int]] = field(default_factory=list)
    spread: list[float] = field(default_factory=list)
    median: list[float] = field(default_factory=list)
    constant: bool = False
