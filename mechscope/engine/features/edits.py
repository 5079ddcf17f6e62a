"""Feature edits compiled to hooks, keeping the SAE's error term: x' = x + sum_i (a'_i - a_i) W_dec[i].

Every feature edit on one SAE in one list shares a single hook, which encodes the site's value once
and applies all changes to those activations, so an edit never sees another's output re-encoded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mechscope.engine.edits import Context, Edits, compiles
from mechscope.engine.features.attached import attached_saes
from mechscope.engine.features.sae import SparseAutoencoder
from mechscope.engine.interventions import FeatureAblation, FeatureClamp, FeatureSteer
from mechscope.engine.sites import Site, SiteKind

Change = Callable[[torch.Tensor], torch.Tensor]  # activations [batch, n] -> their new values
SITE_KINDS: dict[str, SiteKind] = {"resid_pre": "resid_pre", "resid_post": "resid_post", "attn_out": "attn",
                                   "mlp_out": "mlp"}


@dataclass
class FeatureSiteEdit:
    """The changes to one SAE's features in one pass, applied by one hook."""

    sae: SparseAutoencoder
    changes: list[tuple[int, list[int] | None, Change]] = field(default_factory=list)
    deltas: list[torch.Tensor] | None = None  # what the edit wrote into the residual stream, per pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_model]
        features = sorted({feature for feature, _, _ in self.changes})
        column = {feature: i for i, feature in enumerate(features)}
        before = self.sae.encode(x)[..., features]  # [batch, pos, n_features]
        after = before.clone()
        for feature, positions, change in self.changes:
            dst = slice(None) if positions is None else positions
            after[:, dst, column[feature]] = change(after[:, dst, column[feature]])
        delta = (after - before) @ self.sae.W_dec[features]  # [batch, pos, d_model]
        edited = x + delta.to(x.dtype)
        if self.deltas is not None:
            self.deltas.append((edited - x).detach())
        return edited


def feature_site_edits(edits: Edits) -> dict[str, FeatureSiteEdit]:
    """SAE name -> its shared hook's edit, kept with the `Edits` being built (they live and die together)."""
    return vars(edits).setdefault("feature_site_edits", {})


def _compile(iv: FeatureAblation | FeatureClamp | FeatureSteer, ctx: Context, edits: Edits, change: Change) -> None:
    table = attached_saes(ctx.hook_passes())
    sae = table.get(iv.sae_id)
    if sae is None:
        raise ctx.fail(f"no SAE named {iv.sae_id!r} (attached: {', '.join(sorted(table)) or 'none'})")
    if sae.site != iv.site:
        raise ctx.fail(f"SAE {iv.sae_id!r} reads {sae.site}, not {iv.site}")
    ctx.check_layer(sae.layer)
    if not 0 <= iv.feature < sae.d_sae:
        raise ctx.fail(f"feature {iv.feature} is out of range 0..{sae.d_sae - 1}")
    positions = ctx.positions(iv.positions)
    if ctx.dry_run:
        return
    shared = feature_site_edits(edits)
    site_edit = shared.get(iv.sae_id)
    if site_edit is None:
        kind = SITE_KINDS[sae.site_kind]
        deltas = edits.resid_delta(sae.layer) if kind in ("resid_pre", "resid_post") else None
        site_edit = shared[iv.sae_id] = FeatureSiteEdit(sae, deltas=deltas)
        edits.add(sae.layer, Site(kind, sae.layer).edit(ctx.adapter, site_edit))
    site_edit.changes.append((iv.feature, positions, change))


@compiles(FeatureAblation)
def _feature_ablation(iv: FeatureAblation, ctx: Context, edits: Edits) -> None:
    _compile(iv, ctx, edits, torch.zeros_like)


@compiles(FeatureClamp)
def _feature_clamp(iv: FeatureClamp, ctx: Context, edits: Edits) -> None:
    ctx.fits_dtype("value", iv.value)
    value = iv.value
    _compile(iv, ctx, edits, lambda acts: torch.full_like(acts, value))


@compiles(FeatureSteer)
def _feature_steer(iv: FeatureSteer, ctx: Context, edits: Edits) -> None:
    ctx.fits_dtype("coeff", iv.coeff)
    coeff = iv.coeff
    _compile(iv, ctx, edits, lambda acts: acts + coeff)
