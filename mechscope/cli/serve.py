"""`mechscope serve`, `mechscope serve --list` and `mechscope stop`."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import sys
import time

from mechscope.cli.common import add_model_args, load_engine, model_settings
from mechscope.engine.backend_info import backend_status
from mechscope.engine.errors import MechscopeError


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="keep a model loaded and serve it to workbenches and notebooks",
                           description="Load a model once and serve it on a private Unix socket; "
                           "attach with `mechscope --attach NAME` or `mechscope.serve.connect(NAME)`.")
    add_model_args(serve)
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--name", help="server name (default 'default'); its socket lives in the runtime directory")
    where.add_argument("--socket", help="serve on this socket path instead of a named one")
    serve.add_argument("--list", action="store_true", help="list the running servers and exit")
    serve.set_defaults(run=dispatch, uses_model=True)
    stop = sub.add_parser("stop", help="stop a running server cleanly",
                          description="Ask a running `mechscope serve` to cancel the work in hand and exit.")
    stop.add_argument("server", nargs="?", default=None, help="server name or socket path (default 'default')")
    stop.set_defaults(run=dispatch)


def dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "stop":
            return cmd_stop(args.server)
        if args.list:
            return cmd_list()
        return cmd_serve(args)
    except MechscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_serve(args: argparse.Namespace) -> int:
    from mechscope.serve.runtime import ServeError, check_private, place, read_card

    where = place(args.socket or args.name)
    if len(os.fsencode(where.socket)) > 100:  # sun_path holds 104-108 bytes depending on the system
        raise ServeError(f"the socket path {where.socket} is too long for a Unix socket; use a "
                         "shorter --socket or set MECHSCOPE_RUNTIME_DIR to a shorter directory")
    where.socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(where.socket.parent)
    lock_fd = os.open(where.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        card = read_card(where) or {}
        pid = f" (pid {card['pid']}, {card.get('model', '?')})" if "pid" in card else ""
        raise ServeError(f"a server named {where.name!r} is already running{pid}; "
                         f"stop it with `mechscope stop {where.name}`") from None
    for stale in (where.socket, where.card):
        if stale.exists() or stale.is_symlink():
            stale.unlink()
            if stale == where.socket:
                print(f"removed the stale socket of a dead server: {stale}", file=sys.stderr)
    engine = _load(args)
    if engine is None:
        return 2
    from mechscope.serve.server import bind, serve

    try:
        sock = bind(where)
    except OSError as exc:
        raise ServeError(f"cannot listen on {where.socket}: {exc.strerror or exc}") from None
    serve(engine, where, sock)
    return 0


def _load(args: argparse.Namespace):
    """Load the model, with progress lines on stderr; None (after one error line) on failure."""
    last: list[str] = []

    def progress(message: str, fraction: float | None = None) -> None:
        if last[-1:] != [message]:
            last.append(message)
            print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    try:
        engine = load_engine(model_settings(args), getattr(args, "backend", None), progress)
    except MechscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    status = backend_status(engine)
    backend = f" ({status})" if status is not None else ""
    print(f"loaded {engine.info.name}{backend} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return engine


def cmd_list() -> int:
    from mechscope.serve.client import TRANSPORT_ERRORS, Http
    from mechscope.serve.codec import loads
    from mechscope.serve.runtime import all_places, read_card
    from mechscope.serve.wire import PROTOCOL_HEADER, PROTOCOL_VERSION

    rows = []
    for where in all_places():
        card = read_card(where) or {}
        http = Http(where.socket, 3.0, {PROTOCOL_HEADER: str(PROTOCOL_VERSION)})
        try:
            code, body = http.request("GET", "/v1/status")
            status = loads(body) if code == 200 else None
        except (*TRANSPORT_ERRORS, ValueError):
            status = None
        finally:
            http.close()
        if not isinstance(status, dict):
            rows.append((where.name, card.get("model", "?"), "-", "-", "-", "not running (stale socket)"))
            continue
        current = status.get("current")
        job = f"{current['client']}'s {current['kind']}" if current else "idle"
        rows.append((where.name, status.get("model", "?"), status.get("device", "?"),
                     f"{status.get('memory_bytes', 0) / 2**30:.2f} GiB",
                     str(len(status.get("clients", []))), job))
    if not rows:
        print("no servers running (start one with `mechscope serve`)")
        return 0
    header = ("NAME", "MODEL", "DEVICE", "MEMORY", "CLIENTS", "JOB")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_stop(target: str | None) -> int:
    from mechscope.serve.client import connect
    from mechscope.serve.runtime import place

    where = place(target, create=False)
    engine = connect(where.socket, client_name="mechscope stop")
    engine.shutdown()
    with contextlib.suppress(MechscopeError):
        engine.close()
    deadline = time.monotonic() + 15
    while where.socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if where.socket.exists():
        print(f"error: server {where.name!r} did not stop within 15 s", file=sys.stderr)
        return 1
    print(f"stopped {where.name}")
    return 0
