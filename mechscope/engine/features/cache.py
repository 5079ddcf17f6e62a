"""Where SAEs trained here are kept: one cache folder per model digest and training settings."""

from __future__ import annotations

import json
from pathlib import Path

from mechscope.engine.model_cache import cache_dir

MANIFEST = "manifest.json"  # written last by a finished training run


def trained_folder(weights_digest: str | None, site: str, width: int, k: int, corpus_digest: str, tokens: int,
                   seed: int) -> Path:
    """The folder a training run with these settings writes (and resumes from) when no --out is given."""
    return cache_dir() / "features" / (f"{(weights_digest or 'model')[:12]}-{site}-w{width}-k{k}"
                                       f"-{corpus_digest[:8]}-{tokens}-s{seed}")


def trained_saes(weights_digest: str | None) -> tuple[str, ...]:
    """Folders of finished SAEs trained here on the model with this digest, newest first."""
    if not weights_digest:  # a model built in memory (tests, benchmarks) has no SAEs trained on it
        return ()
    root = cache_dir() / "features"
    if not root.is_dir():
        return ()
    found: list[tuple[int, str]] = []
    for folder in root.glob(f"{weights_digest[:12]}-*"):
        manifest = folder / MANIFEST
        try:
            made_on = json.loads(manifest.read_text(encoding="utf-8")).get("model_digest")
            stamp = manifest.stat().st_mtime_ns
        except (OSError, ValueError, AttributeError):
            continue
        if made_on == weights_digest:
            found.append((stamp, str(folder)))
    return tuple(folder for _, folder in sorted(found, reverse=True))
