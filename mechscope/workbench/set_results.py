"""`VerifiedEstimate`, under the name other packages import it by (it lives in `mechscope.requests`)."""

from __future__ import annotations

from mechscope.requests.results import VerifiedEstimate

__all__ = ["VerifiedEstimate"]
