"""Options shared by sub-commands, their checks (done before anything heavy is imported) and output helpers."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mechscope.backends import load_engine, model_settings

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"

# The spellings `mechscope.engine.loading` (dtypes, devices) and `mechscope.engine.model_cache`
# (hub ids) accept; repeated here so a bad value is refused without importing torch.
DTYPES = ("auto", "float32", "fp32", "float", "bfloat16", "bf16", "float16", "fp16", "half")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,3})?)$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
MODEL_OPTIONS = ("model", "device", "dtype", "trust_remote_code", "device_map", "max_memory",
                 "attach", "backend")
BACKENDS = ("native", "nnsight", "ndif")  # mechscope.backends.BACKENDS, without importing it


class UsageError(Exception):
    """A bad command-line option: printed as one line, exit code 2."""


def add_model_args(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    """--model/--device/--dtype/--trust-remote-code, accepted before or after the sub-command.

    The top-level parser holds the defaults (None: not given); a sub-parser only sets what the user
    typed after the sub-command, so an option given before it is never overwritten by a default.
    """
    default: Any = None if top_level else argparse.SUPPRESS
    parser.add_argument("--model", default=default,
                        help="'demo' (SmolLM2-135M-Instruct, the default), a local HF folder, a .gguf "
                        "file or a hub id already in the local Hugging Face hub cache (never downloaded)")
    parser.add_argument("--device", default=default, help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    parser.add_argument("--dtype", default=default,
                        help="auto, float32, bfloat16, float16 (default: auto)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        default=False if top_level else argparse.SUPPRESS,
                        help="allow model code from the model folder (off by default)")
    parser.add_argument("--device-map", default=default,
                        help="auto, balanced, sequential or FILE.json (module name -> device): "
                        "accelerate splits the model over GPUs, the CPU and disk")
    parser.add_argument("--max-memory", default=default,
                        help="per-device budget for the weights, e.g. 0=20GiB,1=20GiB,cpu=64GiB")
    parser.add_argument("--attach", metavar="NAME|PATH", default=default,
                        help="use a running `mechscope serve` (name or socket path) instead of "
                        "loading a model")
    parser.add_argument("--backend", choices=BACKENDS, default=default,
                        help="native (the default: incremental recompute), nnsight (nnsight traces "
                        "here) or ndif (nnsight traces on NDIF's hosted models)")


def add_session_arg(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    parser.add_argument("--session", default=None if top_level else argparse.SUPPRESS,
                        help="record into (or resume) the session with this name")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_common_options(args: argparse.Namespace) -> None:
    """Refuse model and session options that cannot work, before torch is imported.

    A sub-command that loads a model sets `uses_model=True`; the workbench (no sub-command) does too.
    """
    command = getattr(args, "command", None)
    uses_model = command is None or getattr(args, "uses_model", False)
    given = [name for name in MODEL_OPTIONS if getattr(args, name, None) not in (None, False)]
    if given and not uses_model:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{flags} does not apply to `mechscope {command}` (it loads no model)")
    if getattr(args, "session", None) is not None:
        if command is not None:
            raise UsageError(f"--session applies to the workbench only, not to `mechscope {command}`")
        from mechscope.sessions.paths import check_name

        try:
            check_name(args.session)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.dtype is not None and args.dtype.lower().removeprefix("torch.") not in DTYPES:
        raise UsageError(f"unknown dtype {args.dtype!r}; use auto, float32, bfloat16 or float16")
    if args.device is not None and not _DEVICE.match(args.device):
        raise UsageError(f"unknown device {args.device!r}; use auto, cpu, cuda, cuda:N or mps")
    if args.model is not None:
        check_model_source(args.model)
    check_backend(args)


def check_backend(args: argparse.Namespace) -> None:
    """Refuse an nnsight backend without nnsight, or one asked of an attached client."""
    backend = getattr(args, "backend", None)
    if backend in (None, "native"):
        return
    if getattr(args, "attach", None):
        raise UsageError("--backend applies where the model loads: give it to `mechscope serve`")
    if getattr(args, "device_map", None) or getattr(args, "max_memory", None):
        raise UsageError("--device-map and --max-memory apply to the native backend only")
    from mechscope.backends import nnsight_available

    if not nnsight_available():
        raise UsageError(f"--backend {backend} needs nnsight: pip install 'mechscope[nnsight]'")
    if backend == "ndif" and args.model in (None, "demo"):
        raise UsageError("--backend ndif needs --model with a Hugging Face repo id hosted on NDIF")


def check_model_source(source: str) -> None:
    """Refuse a local model path that does not exist or cannot be a model (no torch import)."""
    if source == "demo":
        return
    if not source.strip():
        raise UsageError("--model is empty")
    path = Path(source).expanduser()
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as exc:  # a name too long, a permission problem on a parent folder...
        raise UsageError(f"cannot use model path {_clip(source, 80)!r} ({exc.strerror})") from None
    if is_dir:
        if not (path / "config.json").is_file():
            raise UsageError(f"{source} is a folder without config.json: not a Hugging Face model folder")
        return
    if is_file:
        if path.suffix.lower() != ".gguf":
            raise UsageError(f"{source} is a file but not a .gguf; pass a model folder, a .gguf file "
                             "or a hub id")
        return
    if _HUB_ID.match(source) and not source.startswith((".", "~")) and not source.endswith(".gguf"):
        return  # a hub id: resolved from the local cache when the model loads
    raise UsageError(f"no such file or folder: {_clip(source, 200)}")


def load_engine_or_exit(args: argparse.Namespace, source: str | None = None) -> Any:
    """Load the engine for a headless command, printing progress to stderr; None on failure.

    With `--attach`, a client of a running `mechscope serve` instead (no torch import)."""
    from mechscope.engine.errors import MechscopeError

    if getattr(args, "attach", None):
        return attach_or_exit(args.attach, client_name=f"mechscope {args.command or 'workbench'}")

    settings = model_settings(args)
    if source is not None:
        settings["source"] = source
    quiet = bool(os.environ.get("MECHSCOPE_QUIET"))
    live = sys.stderr.isatty()  # redraw one line in a terminal; plain lines in a log file or pipe
    last_message: list[str] = []

    def progress(message: str, fraction: float | None = None) -> None:
        if quiet:
            return
        if live:
            suffix = f" {fraction:4.0%}" if fraction is not None else ""
            print(f"\r{message}{suffix}\033[K", end="", file=sys.stderr, flush=True)
        elif last_message[-1:] != [message]:
            last_message.append(message)
            print(message, file=sys.stderr, flush=True)

    try:
        return load_engine(settings, getattr(args, "backend", None), progress)
    except MechscopeError as exc:
        print(f"\rerror: {exc}\033[K" if live else f"error: {exc}", file=sys.stderr)
        return None
    finally:
        if live and not quiet:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def attach_or_exit(target: str, client_name: str | None = None) -> Any:
    """A connected `RemoteEngine` for `--attach`, or None after one error line on stderr."""
    from mechscope.engine.errors import MechscopeError
    from mechscope.serve import connect

    try:
        engine = connect(target, client_name=client_name)
    except MechscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    engine.on_wait = wait_reporter(target)
    return engine


def wait_reporter(target: str) -> Callable[[dict], None]:
    """Tell stderr, when a job starts waiting behind another client's job, whose job it is.

    One line each time the job waited behind changes (not every heartbeat), so a terminal, a pipe
    and a log read the same."""
    from mechscope.serve.client import describe_wait

    behind: list[object] = []

    def report(frame: dict) -> None:
        running = frame.get("running") or {}
        key = (running.get("client"), running.get("kind")) if isinstance(running, dict) else None
        if behind[-1:] != [key]:
            behind.append(key)
            print(f"waiting on {target}: {describe_wait(frame)}", file=sys.stderr, flush=True)

    return report


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


clip = _clip


def print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], last_width: int) -> None:
    rows = [row[:-1] + (_clip(row[-1], last_width),) for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
