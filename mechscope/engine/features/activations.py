"""Which SAE features fire on a prompt: the top features per token, read from an SAE folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mechscope.engine.features.formats import load_sae
from mechscope.engine.features.reading import site_values
from mechscope.engine.features.results import MAX_TOP_FEATURES, FeatureActivations
from mechscope.engine.features.sae import FeatureError, SparseAutoencoder
from mechscope.engine.passes import BoundedCache, Passes
from mechscope.engine.placement import execution_device

SAE_FILES_CACHED = 4

_loaded: BoundedCache[tuple, SparseAutoencoder] = BoundedCache(SAE_FILES_CACHED)


def sae_from_folder(passes: Passes, folder: str, site: str | None) -> SparseAutoencoder:
    """The SAE in `folder` checked against the model, on its layer's device; read again when a file in
    the folder changed (the key holds every file's size and modification time)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FeatureError(f"{path}: not a folder")
    try:
        stamp = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file()))
    except OSError as exc:
        raise FeatureError(f"{path}: {exc.strerror or exc}") from None
    key = (str(path.resolve()), site, stamp)
    sae = _loaded.get(key)
    if sae is None:
        sae = _loaded.put(key, load_sae(path, site, passes.adapter.d_model))
    if not 0 <= sae.layer < passes.adapter.n_layers:
        raise FeatureError(f"{path}: the SAE reads {sae.site}; the model has layers 0..{passes.adapter.n_layers - 1}")
    return sae.to(execution_device(passes.adapter.layers[sae.layer]))


def top_features(passes: Passes, sae: SparseAutoencoder, prompt: str, top_k: int) -> FeatureActivations:
    """The `top_k` strongest features at each token of `prompt` (clean run, stopped at the site's
    layer). Callers hold the engine's lock."""
    if not 1 <= top_k <= MAX_TOP_FEATURES:
        raise FeatureError(f"top_k must be in 1..{MAX_TOP_FEATURES}, got {top_k}")
    ids, _ = passes.prompt_ids(prompt)
    with torch.no_grad():
        x = site_values(passes, ids, sae.site)[0].float()  # [pos, d_in]
        acts = sae.encode(x)  # [pos, d_sae]
        error = x.to(acts.device) - sae.decode(acts)  # [pos, d_in]
        k = min(top_k, sae.d_sae)
        values, order = acts.topk(k, dim=-1)  # [pos, k] each, largest first
        order = torch.where(values > 0, order, torch.full_like(order, -1))
    return FeatureActivations(
        site=sae.site, sae_digest=sae.digest, d_sae=sae.d_sae,
        tokens=[passes.decode_token(int(i)) for i in ids[0].tolist()],
        ids=order.cpu().numpy().astype(np.int64), values=values.clamp_min(0).cpu().numpy().astype(np.float32),
        l0=(acts > 0).sum(-1).cpu().numpy().astype(np.int64),
        error_norm=error.norm(dim=-1).cpu().numpy().astype(np.float32),
        site_norm=x.norm(dim=-1).cpu().numpy().astype(np.float32))
