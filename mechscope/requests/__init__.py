"""The request vocabulary: request kinds, their handlers, and `execute`, the only dispatcher.

Importing the package registers every built-in handler (`single`, `sets`, `paths`, `set_circuits`, `features`). No torch, textual or rich
at import time; handlers reach torch only through the engine they are given.
"""

from __future__ import annotations

from mechscope.engine.results import VerifiedEstimate
from mechscope.requests import features as _features  # noqa: F401  (registers the feature handlers)
from mechscope.requests import paths as _paths  # noqa: F401  (registers the path-patching handlers)
from mechscope.requests import set_circuits as _set_circuits  # noqa: F401  (registers the circuit handlers over sets)
from mechscope.requests import sets as _sets  # noqa: F401  (registers the prompt-set handlers)
from mechscope.requests import single as _single  # noqa: F401  (registers the single-prompt handlers)
from mechscope.requests.kinds import (
    REQUEST_TYPES,
    Outcome,
    Request,
    request_from_dict,
    request_to_dict,
)
from mechscope.requests.registry import (
    HANDLERS,
    Handler,
    Summary,
    capabilities,
    execute,
    handler_for,
    handler_of_kind,
    handles,
    user_message,
)
from mechscope.requests.tolerance import Tolerance, tolerance_for

__all__ = [
    "HANDLERS", "REQUEST_TYPES", "Handler", "Outcome", "Request", "Summary", "Tolerance",
    "VerifiedEstimate", "capabilities", "execute", "handler_for", "handler_of_kind", "handles",
    "request_from_dict", "request_to_dict", "tolerance_for", "user_message",
]
