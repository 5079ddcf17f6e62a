"""Which views a run computes, as a small frozen request object."""

from __future__ import annotations

from dataclasses import dataclass

from mechscope.engine.addresses import parse_address


@dataclass(frozen=True)
class Views:
    """Views to compute alongside the prediction.

    attention: head addresses ("L9.H3") whose full [query, key] pattern is returned.
    sinks: attention-sink score (mean attention to the first token) for every head.
    logit_lens / attribution: need a metric target for rank / direction.
    stats: residual norms and the largest activations.
    logprobs: per-token log-probs of the prompt (needs the unembedding at every position).
    logits: full-vocabulary logits sent back by a server (in-process they are always there); without
    it a served run sends the most likely ones exactly (see `Prediction.logits_kept`).
    """

    attention: tuple[str, ...] = ()
    sinks: bool = False
    logit_lens: bool = False
    attribution: bool = False
    stats: bool = False
    logprobs: bool = False
    lens_k: int = 5
    logits: bool = False

    def __post_init__(self) -> None:
        heads = tuple(self.attention)
        for address in heads:
            if parse_address(address).site != "head":
                raise ValueError(f"attention view needs head addresses like L9.H3, got {address!r}")
        object.__setattr__(self, "attention", heads)

    @classmethod
    def all(cls, attention: tuple[str, ...] = ()) -> Views:
        return cls(attention=attention, sinks=True, logit_lens=True, attribution=True, stats=True,
                   logprobs=True, logits=True)
