"""Short, stable component names: `L9.H3`, `L9.attn`, `L9.mlp`, `L9.resid_pre`, `L9.resid_post`, `embed`;
path-patching receivers `L9.H3.q` / `.k` / `.v` (a head's query, key or value input), `L9.mlp`
(the MLP's input) and `resid_final` (the final residual at the metric's position)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Site = Literal["head", "attn", "mlp", "resid_pre", "resid_post", "embed"]

_ADDRESS = re.compile(r"^L(\d+)\.(?:H(\d+)|(attn|mlp|resid_pre|resid_post))$")


@dataclass(frozen=True)
class Address:
    """A parsed component address. `embed` is the residual entering layer 0."""

    site: Site
    layer: int = 0
    head: int | None = None

    def __str__(self) -> str:
        if self.site == "embed":
            return "embed"
        if self.site == "head":
            return f"L{self.layer}.H{self.head}"
        return f"L{self.layer}.{self.site}"


def parse_address(text: str) -> Address:
    """Parse `L9.H3`-style text; ValueError with the accepted forms on anything else."""
    if not isinstance(text, str):
        raise TypeError(f"address must be a string, got {text!r}")
    if text == "embed":
        return Address("embed", 0)
    match = _ADDRESS.match(text.strip())
    if match is None:
        raise ValueError(
            f"bad address {text!r}: expected L<layer>.H<head>, L<layer>.attn, L<layer>.mlp, "
            "L<layer>.resid_pre, L<layer>.resid_post or embed"
        )
    layer = int(match.group(1))
    if match.group(2) is not None:
        return Address("head", layer, int(match.group(2)))
    return Address(match.group(3), layer)  # type: ignore[arg-type]


def head_address(layer: int, head: int) -> str:
    return f"L{layer}.H{head}"


ReceiverKind = Literal["q", "k", "v", "mlp", "resid_final"]
_RECEIVER = re.compile(r"^L(\d{1,6})\.(?:H(\d{1,6})\.([qkv])|(mlp))$")
RESID_FINAL = "resid_final"


@dataclass(frozen=True)
class Receiver:
    """Where a path-patched sender's change is let in: a head's query, key or value input, an MLP's
    input, or the final residual (`layer` unused)."""

    kind: ReceiverKind
    layer: int = 0
    head: int | None = None

    def __str__(self) -> str:
        if self.kind == "resid_final":
            return RESID_FINAL
        if self.kind == "mlp":
            return f"L{self.layer}.mlp"
        return f"L{self.layer}.H{self.head}.{self.kind}"


def parse_receiver(text: str) -> Receiver:
    """`L23.H3.q`, `L23.H3.k`, `L23.H3.v`, `L5.mlp` or `resid_final`; ValueError naming them otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"receiver must be a string, got {text!r}")
    if text.strip() == RESID_FINAL:
        return Receiver("resid_final")
    match = _RECEIVER.match(text.strip())
    if match is None:
        raise ValueError(f"bad receiver {text!r}: expected L<layer>.H<head>.q, .k or .v, L<layer>.mlp "
                         f"or {RESID_FINAL}")
    if match.group(4):
        return Receiver("mlp", int(match.group(1)))
    return Receiver(match.group(3), int(match.group(1)), int(match.group(2)))  # type: ignore[arg-type]


def parse_head(text: str) -> tuple[int, int]:
    """`L9.H3` as (9, 3); ValueError otherwise."""
    address = parse_address(text)
    if address.head is None:
        raise ValueError(f"{text!r} is not a head (L<layer>.H<head>)")
    return address.layer, address.head
