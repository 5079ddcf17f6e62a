"""The server's jobs: one worker thread runs them in order on the engine; each has its own cancel flag.

A job's frames (partials, heartbeats, its outcome) go to the HTTP stream of the client that sent
it through an asyncio queue; `should_stop` is the job's cancel flag, set by its client's cancel or
by its client going away. A queued job that is cancelled is answered at once. A client counts as
attached while its `/v1/attach` connection is open: a client killed outright drops at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

import mechscope.serve.codec as codec
from mechscope.requests.kinds import Outcome, Request
from mechscope.requests.registry import execute, user_message
from mechscope.serve.runtime import Place


class DuplicateJob(ValueError):
    """A client reused the tag of its own job that is still running."""


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def describe(request: Request) -> str:
    sweep_kind = getattr(request, "sweep_kind", None)
    return f"{sweep_kind} sweep" if sweep_kind is not None else request.kind


def outcome_frame(outcome: Outcome) -> bytes:
    """The frame that ends a job's stream: its outcome, predictions compact unless asked for."""
    encoder = codec.Encoder(full_logits=codec.wants_full_logits(outcome.request))
    try:
        frame = {"type": "outcome", "outcome": codec.outcome_to_dict(outcome, encoder)}
    except TypeError as exc:
        return codec.pack({"type": "error", "error": f"the result could not be encoded: {exc}"})
    return codec.pack(frame, encoder.blobs)


class Job:
    """One request from one client: its cancel flag, progress and the frames its stream sends."""

    def __init__(self, number: int, client_id: str, client_name: str, tag: str,
                 request: Request, loop: asyncio.AbstractEventLoop) -> None:
        self.id = f"j{number}"
        self.client_id = client_id
        self.client_name = client_name
        self.tag = tag
        self.request = request
        self.cancel = threading.Event()
        self.state = "queued"
        self.progress: float | None = None
        self.created = time.monotonic()
        self.started: float | None = None
        self._loop = loop
        self.frames: asyncio.Queue[bytes | None] = asyncio.Queue()

    def push(self, frame: bytes | None) -> None:
        """Queue a packed frame for the stream (from the worker thread); None ends the stream."""
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody is listening
            self._loop.call_soon_threadsafe(self.frames.put_nowait, frame)

    def summary(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"id": self.id, "client": self.client_name, "kind": describe(self.request),
                "state": self.state, "progress": self.progress,
                "seconds": round(now - (self.started or self.created), 3)}


class Hub:
    """The engine, its job queue and worker thread, and the clients seen."""

    def __init__(self, engine: Any, place: Place) -> None:
        self.engine = engine
        self.place = place
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.jobs: dict[tuple[str, str], Job] = {}  # (client id, tag) -> job not finished yet
        self.current: Job | None = None
        self.recent: collections.deque[dict] = collections.deque(maxlen=50)
        self.attached: dict[int, tuple[str, str]] = {}  # open /v1/attach connection -> (client id, name)
        self.lock = threading.Lock()
        self.numbers = itertools.count(1)
        self.connections = itertools.count(1)
        self.stop_requested: Callable[[], None] = lambda: None
        self.exiting: Callable[[], bool] = lambda: False  # the HTTP server is shutting down
        self.worker = threading.Thread(target=self._work, name="mechscope-engine", daemon=True)

    # ---------------------------------------------------------------- clients and jobs

    def attach(self, client_id: str, name: str) -> int:
        """A client's attach connection opened; the returned key detaches it."""
        key = next(self.connections)
        with self.lock:
            self.attached[key] = (client_id, name)
        return key

    def detach(self, key: int) -> None:
        with self.lock:
            self.attached.pop(key, None)

    def active_clients(self) -> list[str]:
        """The clients with an attach connection open now (one entry per client, by name)."""
        with self.lock:
            return sorted(dict(self.attached.values()).values())

    def submit(self, client_id: str, client_name: str, tag: str, request: Request,
               loop: asyncio.AbstractEventLoop) -> Job:
        with self.lock:
            if (client_id, tag) in self.jobs:
                raise DuplicateJob(f"job {tag!r} of this client is still running")
            job = Job(next(self.numbers), client_id, client_name, tag, request, loop)
            self.jobs[(client_id, tag)] = job
        self.queue.put(job)
        return job

    def cancel(self, client_id: str, tag: str) -> bool:
        """Cancel the caller's own job `tag`; other clients' jobs cannot be named."""
        with self.lock:
            job = self.jobs.get((client_id, tag))
        if job is None:
            return False
        self.cancel_job(job)
        return True

    def cancel_job(self, job: Job) -> None:
        """Stop `job`: a running one at its next `should_stop` check, a queued one at once."""
        job.cancel.set()
        with self.lock:
            if job.state != "queued":
                return
            job.state = "cancelled"
            self.jobs.pop((job.client_id, job.tag), None)
            self.recent.append(job.summary())
        log(f"job {job.id} {job.client_name}: {describe(job.request)} cancelled while queued")
        job.push(outcome_frame(Outcome(job.request, cancelled=True)))
        job.push(None)

    def waiting(self, job: Job) -> dict[str, Any]:
        """A heartbeat frame for `job`'s stream: its progress, or what it is waiting behind."""
        if job.state == "running":
            return {"type": "running", "progress": job.progress}
        with self.lock:
            queued = sorted((j for j in self.jobs.values() if j.state == "queued"),
                            key=lambda j: j.created)
            current = self.current
        position = next((i for i, j in enumerate(queued) if j is job), 0)
        return {"type": "waiting", "position": position,
                "running": current.summary() if current is not None else None}

    def status(self) -> dict[str, Any]:
        with self.lock:
            current = self.current.summary() if self.current is not None else None
            queued = [j.summary() for j in self.jobs.values() if j.state == "queued"]
            recent = list(self.recent)
        info = self.engine.info
        return {"name": self.place.name, "socket": str(self.place.socket), "pid": os.getpid(),
                "model": info.name, "source": self.engine.source, "device": info.device,
                "dtype": info.dtype, "memory_bytes": memory_bytes(self.engine),
                "clients": self.active_clients(), "current": current, "queued": queued,
                "recent": recent}

    # ---------------------------------------------------------------- the worker

    def _work(self) -> None:
        while (job := self.queue.get()) is not None:
            self._run(job)

    def _run(self, job: Job) -> None:
        waited = time.monotonic() - job.created
        with self.lock:
            if job.state != "queued":  # cancelled while it waited, and already answered
                return
            job.state, job.started, self.current = "running", time.monotonic(), job
        if job.cancel.is_set():
            outcome = Outcome(job.request, cancelled=True)
        else:
            try:
                outcome = execute(self.engine, job.request, on_partial=self._on_partial(job),
                                  should_stop=job.cancel.is_set)
            except Exception as exc:  # a bug in the engine must not take the server down
                traceback.print_exc(file=sys.stderr)
                outcome = Outcome(job.request, error=user_message(exc))
        frame = outcome_frame(outcome)
        state = "cancelled" if outcome.cancelled else "error" if outcome.error else "done"
        with self.lock:
            job.state = state
            self.current = None
            self.jobs.pop((job.client_id, job.tag), None)
            self.recent.append(job.summary())
        log(f"job {job.id} {job.client_name}: {describe(job.request)} {state} in "
            f"{outcome.seconds:.3f} s (waited {waited:.3f} s)"
            + (f": {outcome.error}" if outcome.error else ""))
        job.push(frame)
        job.push(None)

    def _on_partial(self, job: Job) -> Callable[[Any], None]:
        request = job.request
        count = itertools.count(1)

        def on_partial(piece: Any) -> None:
            steps = getattr(request, "max_new_tokens", None)  # generation: one piece per token
            grid = getattr(piece, "values", getattr(piece, "per_row", None))  # sweeps: NaN until done
            if isinstance(steps, int):
                job.progress = min(1.0, next(count) / max(1, steps))
            elif isinstance(grid, np.ndarray) and grid.ndim >= 2:
                rows = np.isfinite(grid.reshape(-1, grid.shape[-1])).all(axis=1)
                job.progress = float(rows.mean()) if rows.size else 1.0
            try:
                job.push(codec.pack_value({"type": "partial"}, "data", piece))
            except TypeError:
                pass  # a partial that cannot travel is skipped; the outcome still comes

        return on_partial

    def shutdown(self) -> None:
        with self.lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            self.cancel_job(job)
        self.queue.put(None)


def memory_bytes(engine: Any) -> int:
    """Resident memory of this process, plus accelerator memory held by torch."""
    total = 0
    try:
        with open("/proc/self/statm") as fh:
            total = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch = sys.modules.get("torch")
    if torch is not None and str(engine.info.device).startswith("cuda"):
        total += int(torch.cuda.memory_allocated())
    return total
