"""What the feature operations return, as plain data: an SAE's quality figures, the features at each
token of a prompt, a metric's attribution to features, one feature's card."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

MAX_TOP_FEATURES = 1000  # features a FeatureActivations lists per token at most
MAX_CARD_ROWS = 100  # contexts and promoted / suppressed tokens a FeatureCardResult holds at most


MASSIVE_NORM = 10.0  # a site value this many times the median norm is a massive activation (an attention sink)


@dataclass(frozen=True)
class SaeQuality:
    """An SAE's quality on held-out text, as papers report it (`features.quality.evaluate`)."""

    tokens: int  # site values measured
    fve: float  # 1 - sum |x - x_hat|^2 / sum |x - mean x|^2
    l0: float  # mean active features per token
    dead_fraction: float  # features never active on these tokens
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_recovered: float
    kl: float  # mean KL(clean || with the reconstruction spliced in), nats per token
    corpus: str = ""  # what text they were measured on
    fve_typical: float = math.nan  # FVE without the massive-activation tokens (see `massive_tokens`)
    massive_tokens: int = 0  # tokens left out of fve_typical: |x| over MASSIVE_NORM x the first batch's median

    def lines(self) -> list[str]:
        return [f"tokens         {self.tokens}",
                f"FVE            {self.fve:.4f}",
                f"FVE typical    {self.fve_typical:.4f}  (without the {self.massive_tokens} massive-activation "
                f"tokens, |x| > {MASSIVE_NORM:g}x the median)",
                f"L0             {self.l0:.2f}",
                f"dead fraction  {self.dead_fraction:.4f}",
                f"CE clean       {self.ce_clean:.4f}",
                f"CE with SAE    {self.ce_sae:.4f}",
                f"CE zero site   {self.ce_zero:.4f}",
                f"CE recovered   {self.ce_recovered:.4f}",
                f"KL             {self.kl:.4f}"]

    def to_json(self) -> dict:
        """Plain JSON (a figure that is not finite as null)."""
        return {f.name: (v if not isinstance(v, float) or math.isfinite(v) else None)
                for f in dataclasses.fields(self) for v in (getattr(self, f.name),)}

    @classmethod
    def from_json(cls, data: object) -> SaeQuality:
        """What `to_json` wrote; ValueError naming the first field that is not."""
        if not isinstance(data, dict):
            raise ValueError("quality figures must be an object")
        values: dict = {}
        for f in dataclasses.fields(cls):
            value = data.get(f.name)
            if f.name == "corpus":
                values[f.name] = value if isinstance(value, str) else ""
            elif f.name in ("tokens", "massive_tokens"):
                value = 0 if value is None and f.name == "massive_tokens" else value
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"quality.{f.name} must be a non-negative integer")
                values[f.name] = value
            elif value is None:
                values[f.name] = math.nan
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"quality.{f.name} must be a number or null")
            else:
                values[f.name] = float(value)
        return cls(**values)

    def summary(self) -> str:
        """`FVE 0.832 · L0 32.0 · dead 0.4% · CE recovered 0.953 · KL 0.118 (16384 tokens)`."""
        return (f"FVE {self.fve:.3f} ({self.fve_typical:.3f} without {self.massive_tokens} massive) · "
                f"L0 {self.l0:.1f} · dead {self.dead_fraction:.1%} · "
                f"CE recovered {self.ce_recovered:.3f} · KL {self.kl:.3f} ({self.tokens} tokens)")


@dataclass
class FeatureActivations:
    """The strongest SAE features at every token of a prompt: `ids` / `values` [pos, k] by activation,
    largest first (id -1 where fewer than k fire), `l0` [pos] how many fire, and what the SAE leaves
    unexplained, `error_norm` [pos] = |x - x_hat| beside `site_norm` [pos] = |x|."""

    site: str
    sae_digest: str  # SparseAutoencoder.digest of the SAE that read them
    d_sae: int
    tokens: list[str]
    ids: np.ndarray  # [pos, k] int64
    values: np.ndarray  # [pos, k] float32
    l0: np.ndarray  # [pos] int64
    error_norm: np.ndarray  # [pos] float32
    site_norm: np.ndarray  # [pos] float32
    quality: SaeQuality | None = None  # figures `mechscope features eval` stored beside this very SAE


MAX_ATTRIBUTED_FEATURES = 1000  # candidates a FeatureAttribution lists at most
MAX_VERIFIED_FEATURES = 200  # candidates it ablates exactly at most


@dataclass
class FeatureAttribution:
    """Attribution of a metric to the SAE features active on a prompt (attribution patching: one
    forward and backward from the SAE's layer on).

    For each listed candidate (position `positions[n]`, feature `features[n]`, activation
    `activations[n]` > 0), ranked by |estimate|: `estimates[n]` = -a * (W_dec[i] . g), the first-order
    change of the metric when the feature is ablated there (g = d metric / d x at the site's value x);
    The first token (the attention sink) is a candidate only with `include_first`.
    `exact[n]` = metric with the feature ablated at that position (x' = x - a W_dec[i], the SAE's error
    kept) minus `base_metric`, NaN when not verified; `direct[n]` = the direct effect of a W_dec[i] on
    `direct_label` (a logit or logit difference) through the final norm with its scale frozen at the
    base run's residual at `metric_position`, 0 at other positions, NaN when the metric has no logit
    direction (kl). Per position [pos]: `error_estimates` = -(e . g) for the SAE's error e = x - x_hat,
    `bias_estimates` = -(b_dec . g), `feature_totals` = the sum of every active feature's estimate, so
    that feature_totals + error_estimates + bias_estimates = -(x . g) at every position.
    `error_exact`: the metric with the error removed at every position (the site's value replaced by
    its reconstruction) minus `base_metric`, NaN when nothing was verified; its estimate is
    error_estimates.sum(). `error_direct`: the error term's direct effect at `metric_position` (NaN
    like `direct`)."""

    site: str
    sae_digest: str
    d_sae: int
    tokens: list[str]
    metric_position: int
    base_metric: float
    n_active: int  # candidate (position, feature) pairs: activation > 0, position > 0 unless include_first
    positions: np.ndarray  # [n] int64
    features: np.ndarray  # [n] int64
    activations: np.ndarray  # [n] float32
    estimates: np.ndarray  # [n] float32
    exact: np.ndarray  # [n] float32, NaN where not verified
    direct: np.ndarray  # [n] float32
    error_estimates: np.ndarray  # [pos] float32
    bias_estimates: np.ndarray  # [pos] float32
    feature_totals: np.ndarray  # [pos] float32
    error_exact: float = float("nan")
    error_direct: float = float("nan")
    include_first: bool = False  # whether the first token's features were candidates
    direct_label: str | None = None
    seconds: float = 0.0

    @property
    def verified(self) -> int:
        return int(np.isfinite(self.exact).sum())


@dataclass
class FeatureCardResult:
    """One SAE feature's card. From the index beside the SAE (`indexed`; `mechscope features index`):
    `density`, the fraction of the `index_tokens` scanned tokens it fires on, and its top contexts,
    strongest first (`context_values` [n] activations, `context_tokens` [n][len] with the firing token
    at `context_at` [n]). From the model: the decoder direction's logit lens, the `promoted` tokens
    with their logits `promoted_logits` [k] (largest first) and the `suppressed` ones (most negative
    first), the direction read through the final norm and the unembedding."""

    site: str
    sae_digest: str
    d_sae: int
    feature: int
    indexed: bool
    index_tokens: int
    density: float | None  # None without an index
    context_values: np.ndarray  # [n] float32
    context_tokens: list[list[str]]
    context_at: list[int]
    promoted: list[str]
    promoted_logits: np.ndarray  # [k] float32
    suppressed: list[str]
    suppressed_logits: np.ndarray  # [k] float32
