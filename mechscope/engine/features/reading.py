"""Reading a site's values with forward passes that stop at the site's layer, and splicing values into one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch

from mechscope.engine.hooks import Hook, installed
from mechscope.engine.interventions import parse_feature_site
from mechscope.engine.passes import Passes
from mechscope.engine.sites import Site, SiteKind

# A feature site's kind (`L<k>.<kind>`) -> the engine's site kind it reads and edits.
SITE_KINDS: dict[str, SiteKind] = {"resid_pre": "resid_pre", "resid_post": "resid_post", "attn_out": "attn",
                                   "mlp_out": "mlp"}


class _Reached(Exception):
    """Raised by the observing hook once the site's value is in hand: the layers above are not run."""


def site_values(passes: Passes, ids: torch.Tensor, site: str) -> torch.Tensor:
    """The clean values at `site` for token ids [batch, pos] -> [batch, pos, d_model] (the model's dtype);
    the forward stops inside the site's layer. Callers hold the engine's lock and no_grad."""
    layer, kind = parse_feature_site(site)
    holder: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor) -> None:  # [batch, pos, d_model]
        holder["x"] = x.detach()
        raise _Reached

    hooks = Site(SITE_KINDS[kind], layer).observe(passes.adapter, keep)
    with installed(passes.align_hooks() + hooks):
        try:
            cast(Any, passes.adapter.model).base_model(input_ids=ids, use_cache=False)
        except _Reached:
            pass
    return holder["x"]


def logits_with_site(passes: Passes, ids: torch.Tensor, site: str,
                     replace: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """Float32 logits [batch, pos, vocab] of a full forward, the value at `site` replaced by
    `replace(x)` (None: the clean model)."""
    layer, kind = parse_feature_site(site)
    hooks: list[Hook] = [] if replace is None else Site(SITE_KINDS[kind], layer).edit(passes.adapter, replace)
    return passes.logits(passes.forward(ids, hooks))
