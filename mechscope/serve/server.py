"""The resident engine server's HTTP side: starlette routes over uvicorn on a private Unix socket.

The small JSON endpoints are starlette routes; `/v1/execute` is a plain ASGI handler so it can
stream frames (`mechscope.serve.codec`) and watch for the client going away at the same time;
`/v1/attach` stays open while a client is attached, which is how `serve --list` counts clients.
The jobs themselves run in `mechscope.serve.jobs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message

import mechscope.serve.codec as codec
from mechscope import __version__
from mechscope.engine.backend_info import backend_record, backend_status
from mechscope.engine.capabilities import DESCRIPTIONS
from mechscope.requests.kinds import request_from_dict
from mechscope.serve.jobs import DuplicateJob, Hub, log
from mechscope.serve.runtime import Place, write_card
from mechscope.serve.wire import (
    CLIENT_HEADER,
    CLIENT_NAME_HEADER,
    FRAME_TYPE,
    HEARTBEAT_SECONDS,
    MAX_REQUEST_BYTES,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
)

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


def engine_capabilities(engine: Any) -> list[str]:
    """What the served engine can do: its `capabilities` set, or every capability but forwarding
    for an engine that does not declare one."""
    declared = getattr(engine, "capabilities", None)
    if isinstance(declared, (set, frozenset)) and all(isinstance(c, str) for c in declared):
        return sorted(declared - {"forward"})
    return sorted(set(DESCRIPTIONS) - {"forward"})


def framed(value: Any) -> Response:
    """A response holding one frame with `value` under "value" (arrays as raw bytes)."""
    return Response(codec.pack_value({}, "value", value), media_type=FRAME_TYPE)


def build_app(hub: Hub) -> Gate:
    async def hello(request: Request) -> Response:
        engine = hub.engine
        return JSONResponse({
            "protocol": PROTOCOL_VERSION, "mechscope": __version__, "name": hub.place.name,
            "pid": os.getpid(), "info": dataclasses.asdict(engine.info), "source": engine.source,
            "weights_digest": engine.weights_digest, "backend": backend_record(engine),
            "backend_status": backend_status(engine), "capabilities": engine_capabilities(engine),
        })

    async def status(request: Request) -> Response:
        return JSONResponse(hub.status())

    async def state(request: Request) -> Response:
        engine = hub.engine
        return framed({
            "reference_prompts": list(engine.reference_prompts),
            "vectors": {name: np.asarray(v) for name, v in dict(engine.vectors).items()},
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

    async def remove_vector(request: Request) -> Response:
        data = await read_json(request, {"name"})
        name = data.get("name")
        if not isinstance(name, str):
            return error(400, "remove_vector needs {\"name\": string}")
        hub.engine.remove_vector(name)
        return JSONResponse({})

    async def cancel(request: Request) -> Response:
        data = await read_json(request, {"job"})
        tag = data.get("job")
        if not isinstance(tag, str):
            return error(400, "cancel needs {\"job\": string}")
        client_id, _ = client_of(request.headers)
        return JSONResponse({"cancelled": hub.cancel(client_id, tag)})

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
        Route("/v1/attach", AttachEndpoint(hub), methods=["POST"]),
        Route("/v1/cancel", cancel, methods=["POST"]),
        Route("/v1/remove_vector", remove_vector, methods=["POST"]),
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
            try:
                job = self.hub.submit(client_id, name, tag or f"anon-{time.monotonic_ns()}",
                                      engine_request, asyncio.get_running_loop())
            except DuplicateJob as exc:
                raise HTTPException(409, str(exc)) from None
        except HTTPException as exc:
            await error(exc.status_code, str(exc.detail))(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", FRAME_TYPE.encode())]})
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


class AttachEndpoint:
    """POST /v1/attach: held open while the client is attached; the client counts while it is.

    A client that exits, closes its engine or is killed outright closes the connection, and the
    kernel tells the server at once."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        client_id, name = client_of(request.headers)
        try:
            await read_json(request, set())
        except HTTPException as exc:
            await error(exc.status_code, str(exc.detail))(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", FRAME_TYPE.encode())]})
        key = self.hub.attach(client_id, name)
        gone = asyncio.ensure_future(receive())  # the body is read: the next message is a disconnect
        try:
            while not gone.done() and not self.hub.exiting():
                await asyncio.wait({gone}, timeout=ATTACH_POLL_SECONDS)
            if not gone.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            self.hub.detach(key)


ATTACH_POLL_SECONDS = 0.25  # how soon an attach connection notices the server shutting down


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

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        version = headers.get(PROTOCOL_HEADER)
        if version is not None and version != str(PROTOCOL_VERSION):
            response = error(400, f"this server speaks mechscope protocol {PROTOCOL_VERSION}, the "
                                  f"client {version}; use the same mechscope version on both sides")
            await response(scope, receive, watch)
        else:
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
    hub.exiting = lambda: bool(server.should_exit)
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
