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
    trained_saes: tuple[str, ...] = ()  # SAE folders trained here on this model (newest first), at load time


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
    # the metric on the prompt the active patches copy from, without interventions (None: no patch)
    source_metric: float | None = None

    @property
    def top(self) -> list[TokenProb]:
        return self.prediction.top

    @property
    def metric(self) -> float | None:
        return self.prediction.metric

    @property
    def logits(self) -> np.ndarray:
        return self.prediction.logits


SweepKind = Literal["head", "attn", "mlp", "resid", "atp"]  # in the order the sweep dialog lists them
SWEEP_KINDS: tuple[SweepKind, ...] = get_args(SweepKind)
Direction = Literal["noising", "denoising"]  # patch the clean run from the corrupted one, or the reverse
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)
HeadInputKind = Literal["output", "q", "k", "v"]  # what a head cell of a sweep patches
HEAD_INPUTS: tuple[HeadInputKind, ...] = get_args(HeadInputKind)
EstimateMethod = Literal["atp", "atp*", "graddrop", "eap-ig"]
ESTIMATE_METHODS: tuple[EstimateMethod, ...] = get_args(EstimateMethod)
MAX_IG_STEPS = 64  # EAP-IG's interpolation steps: each is a forward and backward over the set


def check_direction(direction: str) -> None:
    """ValueError unless `direction` is one of DIRECTIONS."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be {' or '.join(DIRECTIONS)}, got {direction!r}")


EffectScale = Literal["delta", "normalised"]
EFFECT_SCALES: tuple[EffectScale, ...] = get_args(EffectScale)
GAP_EPSILON = 1e-9  # a source metric this close to the base leaves nothing to recover


def normalised_effect(delta: np.ndarray | float, base: float, source: float) -> np.ndarray:
    """(patched - base) / (source - base): 1 when a patch recovers the whole difference between the
    base run and the run it patches from; nan when the two runs give the same metric."""
    gap = float(source) - float(base)
    delta = np.asarray(delta, dtype=np.float64)
    if not np.isfinite(gap) or abs(gap) < GAP_EPSILON:
        return np.full(delta.shape, np.nan)
    return delta / gap


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

    @property
    def normalised(self) -> np.ndarray:
        """`values` as a fraction of the gap source - base (1 = the whole difference recovered)."""
        return normalised_effect(self.values, self.base_metric, self.source_metric)


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


# Head detectors (`mechscope.engine.detectors` computes them over fixed probes, cached per model);
# the help screen shows the definitions.
PROBE_DEFINITIONS: dict[str, str] = {
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
DETECTORS: tuple[str, ...] = tuple(PROBE_DEFINITIONS)
# Role detectors (`mechscope.engine.roles`) over an IOI prompt set (IO, S1, S2, END: the indirect
# object, the subject's first and second mention and the final token of each row); not cached.
ROLE_DEFINITIONS: dict[str, str] = {
    "name_mover": (
        "Name mover: on an IOI set, mean over the rows of the attention from END to IO (Wang et al. "
        "2022: name movers attend to the indirect object and copy it to the output)."),
    "name_mover_logit": (
        "Name mover (logit): on an IOI set, mean over the rows of the head's direct effect at END on "
        "logit(IO) - logit(S): its output written to the residual at END (output projection of its z, "
        "no bias) through the final norm linearised at the run's final residual, then the unembedding."),
    "s_inhibition": (
        "S-inhibition: on an IOI set, mean over the rows of the attention from END to S2 (the "
        "subject's second mention), where S-inhibition heads read that the subject is repeated."),
}
ROLE_DETECTORS: tuple[str, ...] = tuple(ROLE_DEFINITIONS)
DEFINITIONS: dict[str, str] = {**PROBE_DEFINITIONS, **ROLE_DEFINITIONS}


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

    @property
    def normalised(self) -> np.ndarray:
        """The mean effect as a fraction of the mean gap source - base over the rows ([layer, head])."""
        return normalised_effect(self.mean, float(np.mean(self.base_metric)), float(np.mean(self.source_metric)))


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
class VerifiedEstimate:
    """An attribution estimate's mean per head ([layer, head]) and, for the heads it verified, the
    exact patching effect (mean over the rows) that replaces the estimated value (`exact[(layer, head)]`);
    `uncertainty` ([layer, head]) is what chose them when the estimate picked its own candidates."""

    method: str
    estimated: np.ndarray  # [layer, head]
    exact: dict[tuple[int, int], float] = field(default_factory=dict)
    seconds: float = 0.0  # the estimate and its verification together
    estimate_seconds: float = 0.0
    uncertainty: np.ndarray | None = None

    @property
    def values(self) -> np.ndarray:
        """The estimate with every verified head's value replaced by its exact one."""
        out = self.estimated.copy()
        for (layer, head), value in self.exact.items():
            out[layer, head] = value
        return out


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


@dataclass
class FunctionVectorResult:
    """A function vector (Todd et al. 2024) from an in-context set and what it does to zero-shot prompts.

    aie[layer, head]: each head's average indirect effect, the mean over rows of the target's
    probability in the shuffled-label prompt with the head's output at the last position replaced
    by its mean over the clean prompts, minus the probability without (`base_prob`, [row]). `heads`:
    the top heads by AIE, (layer, head); `vector` [d_model]: the sum of their mean outputs written to
    the residual (each head's z through its slice of the output projection, no bias), registered as
    the steering vector `name`. On the zero-shot prompts (each row's query alone), with `coeff` times
    the vector added to the residual entering `layer` at the last position and without: whether the
    top-1 token is the target (`correct_*`, [row] of 0/1) and the target's probability (`prob_*`)."""

    set_name: str
    name: str
    layer: int
    coeff: float
    aie: np.ndarray  # [layer, head]
    heads: tuple[tuple[int, int], ...]
    vector: np.ndarray  # [d_model]
    base_prob: np.ndarray  # [row]
    correct_without: np.ndarray  # [row]
    correct_with: np.ndarray  # [row]
    prob_without: np.ndarray  # [row]
    prob_with: np.ndarray  # [row]
    seconds: float = 0.0

    @property
    def accuracy_without(self) -> float:
        return float(np.mean(self.correct_without))

    @property
    def accuracy_with(self) -> float:
        return float(np.mean(self.correct_with))


@dataclass
class RoleAttention:
    """One head's attention between named roles of a set's prompts (IO, S1, S2, END for IOI).

    mean[q, k] / std[q, k]: over the rows, the attention weight from the position of role roles[q]
    (the query) to the position of role roles[k] (the key); 0 where the key comes after the query."""

    set_name: str
    layer: int
    head: int
    roles: tuple[str, ...]
    mean: np.ndarray  # [role, role]
    std: np.ndarray  # [role, role]
    rows: int
