"""Feature edits compiled to hooks, keeping the SAE's error term: x' = x + sum_i (a'_i - a_i) W_dec[i].

An edit names its SAE by the name it was attached under, or by its folder (read with
`sae_from_folder`, cached by the files' stamps), so a recorded edit replays without attaching anything.

Every feature edit on one SAE in one list shares a single hook, which encodes the site's value once
and applies all changes to those activations, so an edit never sees another's output re-encoded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mechscope.engine.edits import Context, Edits, compiles
from mechscope.engine.features.activations import sae_from_folder
from mechscope.engine.features.attached import attached_saes
from mechscope.engine.features.reading import SITE_KINDS
from mechscope.engine.features.sae import FeatureError, SparseAutoencoder
from mechscope.engine.interventions import FeatureAblation, FeatureClamp, FeatureSteer
from mechscope.engine.sites import Site

Change = Callable[[torch.Tensor], torch.Tensor]  # activations [batch, n] -> their new values


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


def is_folder_id(sae_id: str) -> bool:
    """An `sae_id` that names a folder rather than an attached SAE: a path, or an existing folder."""
    return "/" in sae_id or "\\" in sae_id or sae_id.startswith("~") or Path(sae_id).is_dir()


def _sae(iv: FeatureAblation | FeatureClamp | FeatureSteer, ctx: Context) -> SparseAutoencoder:
    """The SAE attached as `iv.sae_id`, else the one in the folder `iv.sae_id` names."""
    passes = ctx.hook_passes()
    table = attached_saes(passes)
    sae = table.get(iv.sae_id)
    if sae is not None:
        return sae
    if not is_folder_id(iv.sae_id):
        raise ctx.fail(f"no SAE named {iv.sae_id!r} (attached: {', '.join(sorted(table)) or 'none'}; "
                       "or give an SAE folder)")
    try:
        return sae_from_folder(passes, iv.sae_id, iv.site)
    except FeatureError as exc:
        raise ctx.fail(str(exc)) from None


def _compile(iv: FeatureAblation | FeatureClamp | FeatureSteer, ctx: Context, edits: Edits, change: Change) -> None:
    sae = _sae(iv, ctx)
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
