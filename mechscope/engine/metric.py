"""What a run measures: the metric kinds and `Metric`, frozen and JSON-serialisable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

MetricKind = Literal["logit_diff", "prob", "loss", "kl"]
METRIC_KINDS: tuple[str, ...] = get_args(MetricKind)
# The kinds set runs, set sweeps and estimates measure per row (KL is single-prompt only).
SetMetricKind = Literal["logit_diff", "prob", "loss"]
SET_METRIC_KINDS: tuple[str, ...] = get_args(SetMetricKind)
# Each kind as the screens and reports name it.
METRIC_TITLES: dict[str, str] = {"logit_diff": "logit diff", "prob": "prob", "loss": "loss", "kl": "KL"}


@dataclass(frozen=True)
class Metric:
    """What a run measures at `position` (default: last token).

    kind:
      - "logit_diff": logit(target) - logit(foil)
      - "prob": probability of target
      - "loss": -log p(target)
      - "kl": KL(clean || run), the divergence of the run's next-token distribution from the same
        prompt's run without interventions (0 for the clean run; needs no target)
    Target/foil are strings; a multi-token string counts by its first token (see `MetricInfo`).
    """

    kind: MetricKind = "logit_diff"
    target: str = ""
    foil: str = ""
    position: int = -1

    def __post_init__(self) -> None:
        if self.kind not in METRIC_KINDS:
            raise ValueError(f"metric kind must be one of {', '.join(METRIC_KINDS)}, got {self.kind!r}")
        if self.kind == "logit_diff" and self.target and not self.foil:
            raise ValueError("logit_diff needs a foil token")

    @property
    def measurable(self) -> bool:
        """Whether there is something to measure: a target, or a kind that needs none."""
        return bool(self.target) or self.kind == "kl"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "foil": self.foil, "position": self.position}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Metric:
        if not isinstance(data, dict):
            raise ValueError("metric must be a JSON object")
        allowed = {"kind", "target", "foil", "position"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"metric: unknown field(s) {sorted(unknown)}")
        try:
            return Metric(**data)
        except TypeError as exc:
            raise ValueError(f"metric: {exc}") from None
