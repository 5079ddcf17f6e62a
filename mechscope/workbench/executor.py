"""`execute` and `user_message`, under the name other packages import them by until they import
`mechscope.requests` (the dispatcher is `mechscope.requests.registry.execute`)."""

from __future__ import annotations

from mechscope.requests import execute, user_message
from mechscope.requests.registry import OnPartial, ShouldStop

__all__ = ["OnPartial", "ShouldStop", "execute", "user_message"]
