"""A stricter offline stand-in for NDIF: the request runs against the deserialised copies of its
variables, as on the server, and only the values bound to saved variables come back."""

from __future__ import annotations

import linecache
from typing import Any

from nnsight.intervention.backends.local import LocalSimulationBackend
from nnsight.ndif import pull_env
from nnsight.schema.request import RequestModel
from nnsight.tracing.util import push


class ServerLikeBackend(LocalSimulationBackend):
    def __call__(self, tracer: Any) -> None:
        pull_env()
        blob = RequestModel.serialize(tracer, compress=False)
        # deserialize() registers the block's source under the file's name; restore the file's
        # lines afterwards (a real server is another process) so later requests serialise cleanly.
        filename = tracer.info.frame.f_code.co_filename
        saved_lines = linecache.cache.get(filename)
        hidden = self._hide_local_modules()
        try:
            restored = RequestModel.deserialize(blob, self.model._remoteable_persistent_objects(),
                                                compress=False)
        finally:
            self._restore(hidden)
            if saved_lines is not None:
                linecache.cache[filename] = saved_lines
            else:
                linecache.cache.pop(filename, None)
        before = dict(restored.info.frame.f_locals)
        restored.execute(restored.info.code)
        after = restored.info.frame.f_locals
        returned = {k: v for k, v in after.items() if k not in before or v is not before[k]}
        push(tracer.info.frame, returned)


def install(engine: Any) -> None:
    """Route the engine's remote requests (remote="local") through `ServerLikeBackend`."""
    lm = engine.lm

    def backend(remote, blocking, job_id, verbose):
        return ServerLikeBackend(lm)

    object.__setattr__(lm, "_remote_backend", backend)
