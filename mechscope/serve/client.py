"""`RemoteEngine`: the engine Protocol over a `mechscope serve` socket. Imports neither torch nor transformers.

Work travels as requests: `forward` sends any request as `request_to_dict` writes it, streams the
server's frames (waiting, progress, partial results) and decodes the outcome; the server runs it
with the same `execute` an in-process engine does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import itertools
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import httpcore
import numpy as np

import mechscope.serve.codec as codec
from mechscope.engine.capabilities import MissingCapability
from mechscope.engine.errors import Cancelled, EngineUnreachable, MechscopeError
from mechscope.engine.interventions import Intervention
from mechscope.engine.metric import Metric
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.results import GeneratedToken, ModelInfo, RunResult, SweepResult
from mechscope.engine.views import Views
from mechscope.requests.kinds import (
    AddVectorRequest,
    BuildVectorRequest,
    GenerateRequest,
    Outcome,
    ReferencePromptsRequest,
    Request,
    RunRequest,
    SweepRequest,
    ValidateRequest,
    request_to_dict,
)
from mechscope.serve.runtime import Place, ServeError, place
from mechscope.serve.wire import (
    CLIENT_HEADER,
    CLIENT_NAME_HEADER,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
)

OnWait = Callable[[dict], None]
OnUnreachable = Callable[["Request | None"], None]


def describe_wait(frame: dict) -> str:
    """A status-bar line for a waiting frame: "alice's head sweep running 40%"."""
    running = frame.get("running")
    if not running:
        return "waiting for the engine"
    progress = running.get("progress")
    share = f" {progress:.0%}" if isinstance(progress, (int, float)) else ""
    return f"{running.get('client', '?')}'s {running.get('kind', 'job')} running{share}"


class RemoteEngine:
    """A client of one server. Satisfies `EngineProtocol` and returns the same result dataclasses.

    `capabilities` are the server engine's plus "forward": `execute` hands every request to
    `forward`. Each call is one HTTP request; a dropped connection raises `EngineUnreachable` and
    the next call reconnects (or `reconnect()` does it now). While connected, one more connection
    stays open so the server counts this client as attached. `on_wait` receives a frame each
    heartbeat while this client's job waits behind another client's (see `describe_wait`);
    `on_unreachable` is told (with the request that could not run) each time a job fails because
    the server went away.
    """

    def __init__(self, target: Place, client_name: str | None = None, timeout: float = 10.0) -> None:
        self.place = target
        self.client_id = uuid.uuid4().hex
        self.client_name = client_name or f"{_user()}:{os.getpid()}"
        self.on_wait: OnWait | None = None
        self.on_unreachable: OnUnreachable | None = None
        self.capabilities: frozenset[str] = frozenset({"forward"})
        self._timeout = timeout
        self._tags = itertools.count(1)
        self._http: Http | None = None
        self._presence: Presence | None = None
        self._hello: dict[str, Any] = {}
        self.reconnect()

    # ---------------------------------------------------------------- connection

    def _headers(self) -> dict[str, str]:
        return {PROTOCOL_HEADER: str(PROTOCOL_VERSION), CLIENT_HEADER: self.client_id,
                CLIENT_NAME_HEADER: self.client_name}

    def reconnect(self) -> None:
        """Open a fresh connection and handshake; EngineUnreachable if the server is not there."""
        self.close()
        self._http = Http(self.place.socket, self._timeout, self._headers())
        hello = self._call("GET", "/v1/hello", retry=False)
        if hello.get("protocol") != PROTOCOL_VERSION:
            raise ServeError(f"server {self.place.name!r} speaks mechscope protocol "
                             f"{hello.get('protocol')}, this client {PROTOCOL_VERSION}; "
                             "use the same mechscope version on both sides")
        try:
            info = dict(hello["info"])
            info["trained_saes"] = tuple(str(f) for f in info.get("trained_saes", ()))
            self._info = ModelInfo(**info)
            offered = frozenset(str(c) for c in hello["capabilities"])
        except (KeyError, TypeError) as exc:
            raise MechscopeError(f"bad handshake from the server: {exc}") from None
        self._hello = hello
        self.capabilities = offered | {"forward"}
        self._presence = Presence(self.place.socket, self._headers())

    def close(self) -> None:
        if self._presence is not None:
            self._presence.close()
            self._presence = None
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: BaseException) -> EngineUnreachable:
        if self._http is not None:
            self._http.close()
            self._http = None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return EngineUnreachable(
            f"engine server {self.place.name!r} is unreachable at {self.place.socket} ({reason}); "
            f"start it with `mechscope serve --name {self.place.name}` and try again")

    def _client(self) -> Http:
        if self._http is None:
            self.reconnect()
        assert self._http is not None
        return self._http

    def _call(self, method: str, path: str, payload: Any = None, retry: bool = True) -> Any:
        """One JSON call; a stale pooled connection is retried once on a fresh one."""
        return _checked(*self._exchange(method, path, payload, retry))

    def _exchange(self, method: str, path: str, payload: Any, retry: bool = True) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                return self._client().request(method, path, payload)
            except TRANSPORT_ERRORS as exc:
                failure = self._unreachable(exc)
                if not retry or attempt:
                    raise failure from None
        raise AssertionError("unreachable")

    def _framed(self, method: str, path: str, payload: Any = None) -> Any:
        """One call whose answer is a frame holding a value (arrays as raw bytes)."""
        status, body = self._exchange(method, path, payload)
        if status != 200:
            _checked(status, body)
        frame, blobs = _wire(codec.unpack, body)
        return _wire(codec.decode, frame.get("value"), 0, blobs)

    # ---------------------------------------------------------------- work

    def forward(self, request: Request, on_partial: Callable[[Any], None] | None = None,
                should_stop: ShouldStop | None = None) -> Any:
        """Run `request` on the server and return its result, raising as a local engine would:
        `Cancelled` when stopped, `MechscopeError` with the server's one line on failure."""
        outcome = self.execute(request, on_partial, should_stop)
        if outcome.cancelled:
            raise Cancelled(f"{request.kind} stopped")
        if outcome.error is not None:
            capability = _missing_capability(outcome.error)
            if capability is None:
                raise MechscopeError(outcome.error)
            refusal = MissingCapability(capability, self.place.name)
            refusal.args = (outcome.error,)  # the server's own words
            raise refusal
        return outcome.result

    def execute(self, request: Request, on_partial: Callable[[Any], None] | None = None,
                should_stop: ShouldStop | None = None) -> Outcome:
        """Run `request` on the server and return its outcome (with this `request` in it)."""
        try:
            return self._execute(request, on_partial, should_stop)
        except EngineUnreachable:
            if self.on_unreachable is not None:
                self.on_unreachable(request)
            raise

    def _execute(self, request: Request, on_partial: Callable[[Any], None] | None,
                 should_stop: ShouldStop | None) -> Outcome:
        tag = f"t{next(self._tags)}"
        body = {"request": request_to_dict(request), "job": tag}
        for attempt in (0, 1):
            streamed = False
            try:
                with self._client().stream("/v1/execute", body) as (status, chunks):
                    if status != 200:
                        _checked(status, b"".join(chunks))
                    frames = iter(codec.FrameReader(chunks))
                    while (item := _wire(next, frames, None)) is not None:
                        streamed = True
                        frame, blobs = item
                        kind = frame.get("type")
                        if kind == "outcome":
                            for _ in chunks:  # read to the end so the connection is reused
                                pass
                            return _wire(codec.outcome_from_dict, request, frame.get("outcome"), blobs)
                        if kind == "error":
                            raise MechscopeError(str(frame.get("error")))
                        if kind == "partial" and on_partial is not None:
                            on_partial(_wire(codec.decode, frame.get("data"), 0, blobs))
                        elif kind == "waiting" and self.on_wait is not None:
                            self.on_wait(frame)
                        if should_stop is not None and should_stop():
                            self.cancel(tag)
                            should_stop = None
                raise EngineUnreachable(
                    f"engine server {self.place.name!r} closed the stream before the outcome")
            except TRANSPORT_ERRORS as exc:
                failure = self._unreachable(exc)
                if streamed or attempt:
                    raise failure from None
        raise AssertionError("unreachable")

    def cancel(self, tag: str) -> bool:
        """Cancel this client's job `tag` (other clients' jobs are out of reach)."""
        return bool(self._call("POST", "/v1/cancel", {"job": tag}).get("cancelled"))

    def status(self) -> dict[str, Any]:
        """The server's status: model, memory, clients, the current job and the queue."""
        return self._call("GET", "/v1/status")

    def shutdown(self) -> None:
        self._call("POST", "/v1/shutdown", {}, retry=False)

    # ---------------------------------------------------------------- EngineProtocol

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def source(self) -> str:
        return str(self._hello.get("source", ""))

    @property
    def backend(self) -> RemoteBackend | None:
        """The server's backend (None for the native engine): its status line and session record."""
        status = self._hello.get("backend_status")
        record = self._hello.get("backend")
        if not isinstance(status, str) or not isinstance(record, dict):
            return None
        return RemoteBackend(status, record)

    @property
    def server_pid(self) -> int | None:
        """The server process's id at the last handshake (a new one after a restart)."""
        pid = self._hello.get("pid")
        return pid if isinstance(pid, int) else None

    @property
    def weights_digest(self) -> str:
        return str(self._hello.get("weights_digest", ""))

    @property
    def vectors(self) -> Mapping[str, np.ndarray]:
        return dict(self._framed("GET", "/v1/state")["vectors"])

    @property
    def reference_prompts(self) -> Sequence[str]:
        return list(self._framed("GET", "/v1/state")["reference_prompts"])

    @reference_prompts.setter
    def reference_prompts(self, prompts: Sequence[str]) -> None:
        self.set_reference_prompts(prompts)

    def tokenize(self, text: str) -> tuple[list[int], list[str]]:
        data = self._call("POST", "/v1/tokenize", {"text": text})
        return list(data["ids"]), list(data["pieces"])

    def decode_token(self, token_id: int) -> str:
        return str(self._call("POST", "/v1/decode", {"id": int(token_id)})["text"])

    def remove_vector(self, name: str) -> None:
        self._call("POST", "/v1/remove_vector", {"name": name})

    # The methods below are the engine interface for callers holding an engine rather than
    # requests (notebooks, scripts): each is its request, forwarded. `run` asks for every logit,
    # as `Engine.run` returns them.

    def run(self, prompt: str, interventions: Iterable[Intervention] = (), views: Views | None = None,
            metric: Metric | None = None, corrupted: str | None = None, top_k: int = 10,
            should_stop: ShouldStop | None = None) -> RunResult:
        views = dataclasses.replace(views or Views(), logits=True)
        return self.forward(RunRequest(prompt, corrupted=corrupted, metric=metric, views=views,
                                       interventions=tuple(interventions), top_k=top_k),
                            should_stop=should_stop)

    def sweep(self, kind: str, clean: str, corrupt: str, metric: Metric, direction: str = "noising",
              on_progress: Callable[[SweepResult], None] | None = None,
              should_stop: ShouldStop | None = None,
              interventions: Iterable[Intervention] = ()) -> SweepResult:
        request = SweepRequest(kind, clean, corrupt, metric, direction,  # type: ignore[arg-type]
                               tuple(interventions))
        return self.forward(request, on_progress, should_stop)

    def generate(self, prompt: str, interventions: Iterable[Intervention] = (), max_new_tokens: int = 20,
                 temperature: float = 0.0, seed: int = 0, corrupted: str | None = None,
                 on_token: Callable[[GeneratedToken], None] | None = None,
                 should_stop: ShouldStop | None = None) -> list[GeneratedToken]:
        request = GenerateRequest(prompt, corrupted=corrupted, interventions=tuple(interventions),
                                  max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        return self.forward(request, on_token, should_stop)

    def validate(self, interventions: Iterable[Intervention], prompt: str,
                 corrupted: str | None = None) -> None:
        self.forward(ValidateRequest(prompt, corrupted, tuple(interventions)))

    def add_vector(self, name: str, array: np.ndarray) -> None:
        self.forward(AddVectorRequest(name, np.asarray(array, dtype=np.float32).reshape(-1)))

    def build_steering_vector(self, name: str, layer: int, positive: Sequence[str],
                              negative: Sequence[str]) -> np.ndarray:
        return self.forward(BuildVectorRequest(name, layer, tuple(positive), tuple(negative)))

    def set_reference_prompts(self, prompts: Sequence[str]) -> None:
        self.forward(ReferencePromptsRequest(tuple(prompts)))


@dataclasses.dataclass(frozen=True)
class RemoteBackend:
    """A served backend's status line and session record, from the handshake."""

    status: str
    record: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.record)


def _missing_capability(error: str) -> str | None:
    """The capability a server's refusal names ("... (capability 'prompt_sets')"), if it is one."""
    marker = "(capability '"
    if not error.endswith("')") or marker not in error:
        return None
    return error[error.rindex(marker) + len(marker):-2]


class Presence:
    """The connection that says this client is attached: an open POST /v1/attach, read by a daemon
    thread until the server ends it; closing it (or this process dying) detaches the client."""

    def __init__(self, socket_path: os.PathLike | str, headers: dict[str, str]) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lines = ["POST /v1/attach HTTP/1.1", "host: mechscope", "content-type: application/json",
                 "content-length: 2", *(f"{k}: {v}" for k, v in headers.items())]
        try:
            self._sock.connect(str(socket_path))
            self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n{}").encode("latin-1"))
        except OSError:
            self._sock.close()  # the server went away between the handshake and here
            return
        threading.Thread(target=self._drain, name="mechscope-attach", daemon=True).start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while self._sock.recv(4096):
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread
        self._sock.close()


TRANSPORT_ERRORS = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException,
                    httpcore.ConnectionNotAvailable)


class Http:
    """HTTP/1.1 over the Unix socket with httpcore (httpx's transport, without its CLI imports)."""

    def __init__(self, socket_path: os.PathLike | str, timeout: float, headers: dict[str, str]) -> None:
        self._pool = httpcore.ConnectionPool(uds=str(socket_path), max_connections=4)
        self._headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        self._headers.append((b"content-type", b"application/json"))
        self._timeouts = {"connect": timeout, "read": None, "write": timeout, "pool": timeout}

    def _args(self, payload: Any) -> dict[str, Any]:
        content = b"" if payload is None else json.dumps(payload).encode("utf-8")
        return {"headers": self._headers, "content": content,
                "extensions": {"timeout": self._timeouts}}

    def request(self, method: str, path: str, payload: Any = None) -> tuple[int, bytes]:
        response = self._pool.request(method, f"http://mechscope{path}", **self._args(payload))
        return response.status, response.content

    @contextlib.contextmanager
    def stream(self, path: str, payload: Any) -> Iterator[tuple[int, Iterator[bytes]]]:
        """(status, chunks): the response body as it arrives."""
        with self._pool.stream("POST", f"http://mechscope{path}", **self._args(payload)) as response:
            yield response.status, iter(response.iter_stream())

    def close(self) -> None:
        self._pool.close()


def _wire(decode: Callable[..., Any], *args: Any) -> Any:
    """`decode(*args)`, its failure worded as a bad frame."""
    try:
        return decode(*args)
    except (ValueError, KeyError, TypeError) as exc:
        raise MechscopeError(f"bad frame from the server: {exc}") from None


def _checked(status: int, body: bytes) -> Any:
    """The response's JSON value, or the server's one-line error as a MechscopeError."""
    try:
        value = codec.loads(body) if body else None
    except ValueError as exc:
        if status == 200:
            raise MechscopeError(f"bad answer from the server: {exc}") from None
        value = None
    if status == 200:
        return value
    message = value.get("error") if isinstance(value, dict) else None
    raise MechscopeError(message or f"server answered HTTP {status}")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"


def connect(name_or_path: str | os.PathLike | None = None, client_name: str | None = None) -> RemoteEngine:
    """A `RemoteEngine` attached to the server with this name (or socket path); default 'default'."""
    return RemoteEngine(place(name_or_path, create=False), client_name=client_name)
