"""The narrow view of an engine that batched work (prompt sets, estimators, detectors, massive activations) uses."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

import torch

from mechscope.engine.adapters import Adapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class ResidentModel(Protocol):
    """A model held resident with its tokenizer, and the lock model work runs under.

    `mechscope.engine.Engine` is one; these modules never import it, so none of them can reach the
    engine's other state (vectors, reference prompts, caches of single-prompt passes)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: Adapter
    device: torch.device
    dtype: torch.dtype
    weights_digest: str

    def guard(self) -> AbstractContextManager[None]:
        """Model work under the engine's lock (running out of memory becomes OutOfMemory)."""
        ...

    def tokenize(self, text: str) -> tuple[list[int], list[str]]: ...


__all__ = ["ResidentModel"]
