"""The SAEs attached to a model, by name: one table per `Passes`, so compile functions find them by context."""

from __future__ import annotations

import weakref

from mechscope.engine.features.sae import FeatureError, SparseAutoencoder
from mechscope.engine.passes import Passes
from mechscope.engine.placement import execution_device

_TABLES: weakref.WeakKeyDictionary[Passes, dict[str, SparseAutoencoder]] = weakref.WeakKeyDictionary()


def attached_saes(passes: Passes) -> dict[str, SparseAutoencoder]:
    """The name -> SAE table of the model behind `passes` (the engine holds the same dict)."""
    return _TABLES.setdefault(passes, {})


def attach(passes: Passes, name: str, sae: SparseAutoencoder) -> SparseAutoencoder:
    """Check `sae` against the model and hold it under `name` on its layer's device; FeatureError otherwise."""
    a = passes.adapter
    if not isinstance(name, str) or not name.strip():
        raise FeatureError("an SAE needs a non-empty name")
    if sae.d_in != a.d_model:
        raise FeatureError(f"SAE {name!r} reads vectors of width {sae.d_in}, the model's d_model is {a.d_model}")
    if not 0 <= sae.layer < a.n_layers:
        raise FeatureError(f"SAE {name!r} is at {sae.site}; the model has layers 0..{a.n_layers - 1}")
    placed = sae.to(execution_device(a.layers[sae.layer]))
    attached_saes(passes)[name] = placed
    return placed


def lookup(passes: Passes, name: str) -> SparseAutoencoder:
    table = attached_saes(passes)
    if name not in table:
        raise FeatureError(f"no SAE named {name!r} (attached: {', '.join(sorted(table)) or 'none'})")
    return table[name]
