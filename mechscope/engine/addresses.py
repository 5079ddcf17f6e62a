"""Short, stable component names: `L9.H3`, `L9.attn`, `L9.mlp`, `L9.resid_pre`, `L9.resid_post`, `embed`."""

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
