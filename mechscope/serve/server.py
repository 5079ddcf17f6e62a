"""The resident engine server: one model, one job at a time, HTTP over a private Unix socket.

Starlette routes the small JSON endpoints; `/v1/execute` is a plain ASGI handler so it can stream
newline-delimited JSON and watch for the client going away at the same time. Jobs run one at a time
on a worker thread with `mechscope.workbench.executor.execute`; each job's `should_stop` is its own
cancel flag, set by its client's cancel or by its client disconnecting.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import queue
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mechscope import __version__
from mechscope.serve import codec
from mechscope.serve.runtime import Place, write_card
from mechscope.serve.wire import (
    CLIENT_HEADER,
    CLIENT_NAME_HEADER,
    HEARTBEAT_SECONDS,
    MAX_REQUEST_BYTES,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
)
from mechscope.workbench.executor import execute, user_message
from mechscope.workbench.requests import (
    GenerateRequest,
    Outcome,
    SweepRequest,
    request_from_dict,
)
from mechscope.workbench.requests import (
    Request as EngineRequest,
)

CLIENT_ACTIVE_SECONDS = 15 * 60  # a client counts as attached while it made a call this recently


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def describe(request: EngineRequest) -> str:
    return f"{request.sweep_kind} sweep" if isinstance(request, SweepRequest) else request.kind


class Job:
    """One request from one client: its cancel flag, progress and the frames its stream sends."""

    def __init__(self, number: int, client_id: str, client_name: str, tag: str,
                 request: EngineRequest, loop: asyncio.AbstractEventLoop) -> None:
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

    def push(self, frame: dict | None) -> None:
        """Queue a frame for the stream (from the worker thread); None ends the stream."""
        data = None if frame is None else codec.dumps(frame)
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody is listening
            self._loop.call_soon_threadsafe(self.frames.put_nowait, data)

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
        self.clients: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.numbers = itertools.count(1)
        self.stop_requested: Callable[[], None] = lambda: None
        self.worker = threading.Thread(target=self._work, name="mechscope-engine", daemon=True)

    # ---------------------------------------------------------------- clients and jobs

    def seen(self, client_id: str, name: str) -> None:
        with self.lock:
            self.clients[client_id] = {"name": name, "seen": time.monotonic()}

    def forget(self, client_id: str) -> None:
        with self.lock:
            self.clients.pop(client_id, None)

    def active_clients(self) -> list[str]:
        now = time.monotonic()
        with self.lock:
            return sorted(c["name"] for c in self.clients.values()
                          if now - c["seen"] < CLIENT_ACTIVE_SECONDS)

    def submit(self, client_id: str, client_name: str, tag: str, request: EngineRequest,
               loop: asyncio.AbstractEventLoop) -> Job:
        with self.lock:
            if (client_id, tag) in self.jobs:
                raise HTTPException(409, f"job {tag!r} of this client is still running")
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
        job.push({"type": "outcome", "outcome": codec.outcome_to_dict(Outcome(job.request, cancelled=True))})
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
        try:
            frame: dict[str, Any] = {"type": "outcome", "outcome": codec.outcome_to_dict(outcome)}
        except TypeError as exc:
            frame = {"type": "error", "error": f"the result could not be encoded: {exc}"}
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
            if isinstance(request, GenerateRequest):
                job.progress = min(1.0, next(count) / max(1, request.max_new_tokens))
            elif getattr(piece, "values", None) is not None:
                rows = np.isfinite(piece.values).all(axis=1)
                job.progress = float(rows.mean()) if rows.size else 1.0
            try:
                job.push({"type": "partial", "data": codec.encode(piece)})
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


# -------------------------------------------------------------------- HTTP


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_json(request: Request, allowed: frozenset[str] | set[str]) -> dict[str, Any]:
    """The JSON object body with no field outside `allowed`, bounded by MAX_REQUEST_BYTES;
    HTTPException 400/413 otherwise."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_REQUEST_BYTES):
        raise HTTPException(413, f"request body over {MAX_REQUEST_BYTES} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                raise HTTPException(413, f"request body over {MAX_REQUEST_BYTES} bytes")
    except ClientDisconnect:
        raise HTTPException(400, "the request body was cut short") from None
    try:
        data = codec.loads(bytes(body))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    if set(data) - set(allowed):
        raise HTTPException(400, f"unknown field(s) {sorted(set(data) - set(allowed))}")
    return data


def client_of(scope_headers: Any) -> tuple[str, str]:
    client_id = scope_headers.get(CLIENT_HEADER, "anonymous")[:64]
    return client_id, scope_headers.get(CLIENT_NAME_HEADER, client_id)[:64]


def build_app(hub: Hub) -> Starlette:
    async def hello(request: Request) -> Response:
        engine = hub.engine
        return JSONResponse({
            "protocol": PROTOCOL_VERSION, "mechscope": __version__, "name": hub.place.name,
            "pid": os.getpid(), "info": codec.encode(engine.info), "source": engine.source,
            "weights_digest": engine.weights_digest,
        })

    async def status(request: Request) -> Response:
        return JSONResponse(hub.status())

    async def state(request: Request) -> Response:
        engine = hub.engine
        return JSONResponse({
            "reference_prompts": list(engine.reference_prompts),
            "vectors": {name: codec.encode(np.asarray(v)) for name, v in dict(engine.vectors).items()},
        })

    async def tokenize(request: Request) -> Response:
        data = await read_json(request, {"text"})
        text = data.get("text")
        if not isinstance(text, str):
            return error(400, "tokenize needs {\"text\": string}")
        ids, pieces = hub.engine.tokenize(text)
        return JSONResponse({"ids": [int(i) for i in ids], "pieces": list(pieces)})

    async def decode(request: Request) -> Response:
        data = await read_json(request, {"id"})
        token_id = data.get("id")
        if isinstance(token_id, bool) or not isinstance(token_id, int) or not (
                0 <= token_id < hub.engine.info.vocab_size):
            return error(400, "decode needs {\"id\": token id within the vocabulary}")
        return JSONResponse({"text": hub.engine.decode_token(token_id)})

    async def cancel(request: Request) -> Response:
        data = await read_json(request, {"job"})
        tag = data.get("job")
        if not isinstance(tag, str):
            return error(400, "cancel needs {\"job\": string}")
        client_id, _ = client_of(request.headers)
        return JSONResponse({"cancelled": hub.cancel(client_id, tag)})

    async def bye(request: Request) -> Response:
        hub.forget(client_of(request.headers)[0])
        return JSONResponse({})

    async def shutdown(request: Request) -> Response:
        log(f"stop requested by {client_of(request.headers)[1]}")
        hub.shutdown()
        hub.stop_requested()
        return JSONResponse({"stopping": True})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, str(exc.detail))

    app = Starlette(routes=[
        Route("/v1/hello", hello, methods=["GET"]),
        Route("/v1/status", status, methods=["GET"]),
        Route("/v1/state", state, methods=["GET"]),
        Route("/v1/tokenize", tokenize, methods=["POST"]),
        Route("/v1/decode", decode, methods=["POST"]),
        Route("/v1/execute", ExecuteEndpoint(hub), methods=["POST"]),
        Route("/v1/cancel", cancel, methods=["POST"]),
        Route("/v1/bye", bye, methods=["POST"]),
        Route("/v1/shutdown", shutdown, methods=["POST"]),
    ], exception_handlers={HTTPException: http_error})
    return Gate(app, hub)


class ExecuteEndpoint:
    """POST /v1/execute: queue a request and stream its frames as newline-delimited JSON."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        client_id, name = client_of(request.headers)
        try:
            data = await read_json(request, {"request", "job"})
            tag = data.get("job", "")
            if not isinstance(tag, str) or len(tag) > 64:
                raise HTTPException(400, "job must be a string of at most 64 characters")
            try:
                engine_request = request_from_dict(data.get("request"))
            except (ValueError, TypeError) as exc:
                raise HTTPException(400, f"bad request: {exc}") from None
            job = self.hub.submit(client_id, name, tag or f"anon-{time.monotonic_ns()}",
                                  engine_request, asyncio.get_running_loop())
        except HTTPException as exc:
            await error(exc.status_code, str(exc.detail))(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson")]})
        gone = asyncio.ensure_future(receive())  # the body is read: the next message is a disconnect
        finished = False
        try:
            while not gone.done():
                try:
                    line = await asyncio.wait_for(job.frames.get(), HEARTBEAT_SECONDS)
                except asyncio.TimeoutError:
                    line = codec.dumps(self.hub.waiting(job))
                if line is None:
                    finished = True
                    break
                await send({"type": "http.response.body", "body": line, "more_body": True})
            if finished:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            if not finished:
                self.hub.cancel_job(job)
                log(f"job {job.id} {job.client_name}: client went away; cancelling")


class Gate:
    """Checks the protocol version, records the client, logs every request with its duration."""

    def __init__(self, app: Any, hub: Hub) -> None:
        self.app = app
        self.hub = hub

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        client_id, name = client_of(headers)
        started = time.perf_counter()
        status = [0]

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        version = headers.get(PROTOCOL_HEADER)
        if version is not None and version != str(PROTOCOL_VERSION):
            response = error(400, f"this server speaks mechscope protocol {PROTOCOL_VERSION}, the "
                                  f"client {version}; use the same mechscope version on both sides")
            await response(scope, receive, watch)
        else:
            if client_id != "anonymous":
                self.hub.seen(client_id, name)
            await self.app(scope, receive, watch)
        log(f"{name} {scope['method']} {scope['path']} {status[0]} "
            f"{(time.perf_counter() - started) * 1000:.1f} ms")


# -------------------------------------------------------------------- running


def bind(place: Place) -> socket.socket:
    """A listening socket at `place.socket`, mode 0600 from the start (no window where it is open)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(place.socket))
    finally:
        os.umask(old)
    os.chmod(place.socket, 0o600)
    sock.listen(64)
    return sock


def serve(engine: Any, place: Place, sock: socket.socket) -> None:
    """Serve `engine` on the bound `sock` until stopped (SIGINT/SIGTERM or POST /v1/shutdown)."""
    import uvicorn

    hub = Hub(engine, place)
    hub.worker.start()
    config = uvicorn.Config(build_app(hub), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    hub.stop_requested = stop
    info = engine.info
    write_card(place, {"name": place.name, "pid": os.getpid(), "model": info.name,
                       "source": engine.source, "device": info.device, "dtype": info.dtype,
                       "protocol": PROTOCOL_VERSION, "started": time.time()})
    log(f"serving {info.name} ({info.device}, {info.dtype}) as {place.name!r} on {place.socket}")
    try:
        server.run(sockets=[sock])
    finally:
        hub.shutdown()
        for path in (place.socket, place.card):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        log(f"server {place.name!r} stopped")
