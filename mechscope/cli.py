"""Command line: `mechscope` opens the workbench; sub-commands call the engine and sessions headlessly."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mechscope import __version__

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="demo",
                        help="'demo' (SmolLM2-135M-Instruct), a local HF folder, a .gguf file or a hub id in the local cache")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default: auto)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the model folder (off by default)")
    parser.add_argument("--attach", metavar="NAME|PATH",
                        help="use a running `mechscope serve` (name or socket path) instead of loading a model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechscope",
        description="A terminal workbench for mechanistic interpretability. "
        "With no sub-command, opens the workbench.",
    )
    parser.add_argument("--version", action="version", version=f"mechscope {__version__}")
    _add_model_args(parser)
    parser.add_argument("--session", help="record into (or resume) the session with this name")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    inspect = sub.add_parser("inspect", help="run one prompt and print predictions and top heads")
    _add_model_args(inspect)
    inspect.add_argument("prompt", nargs="?", default=IOI_PROMPT)
    inspect.add_argument("--target", default=" Mary", help="target token text (default ' Mary')")
    inspect.add_argument("--foil", default=" John", help="foil token text (default ' John')")
    inspect.add_argument("--top-k", type=int, default=10)
    inspect.add_argument("--heads", type=int, default=10, help="how many top heads to list")

    from mechscope.sessions import cli as sessions_cli

    sessions_cli.add_parsers(sub, _add_model_args)
    from mechscope.serve import cli as serve_cli

    serve_cli.add_parsers(sub)
    from mechscope.workbench import export_cli

    export_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            from mechscope.tui.app import run_app

            return run_app(args)
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "export-sweep":
            from mechscope.workbench.export_cli import cmd_export_sweep

            return cmd_export_sweep(args)
        if args.command in ("serve", "stop"):
            from mechscope.serve import cli as serve_cli

            return serve_cli.dispatch(args)
        from mechscope.sessions import cli as sessions_cli

        return sessions_cli.dispatch(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def load_engine_or_exit(args: argparse.Namespace):
    """Load the engine for a headless command, printing progress to stderr; None on failure."""
    if getattr(args, "attach", None):
        from mechscope.serve.cli import attach_or_exit

        return attach_or_exit(args.attach, client_name=f"mechscope {args.command}")
    from mechscope.engine import Engine
    from mechscope.engine.errors import MechscopeError

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
        engine = Engine.load(args.model, device=args.device, dtype=args.dtype,
                             trust_remote_code=args.trust_remote_code, progress=progress)
    except MechscopeError as exc:
        print(f"\rerror: {exc}\033[K" if live else f"error: {exc}", file=sys.stderr)
        return None
    finally:
        if live and not quiet:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
    return engine


def cmd_inspect(args: argparse.Namespace) -> int:
    from mechscope.engine import Metric, Views
    from mechscope.engine.errors import MechscopeError

    if not args.prompt.strip():
        print("error: the prompt is empty", file=sys.stderr)
        return 2
    engine = load_engine_or_exit(args)
    if engine is None:
        return 2
    try:
        metric = Metric("logit_diff", target=args.target, foil=args.foil) if args.foil else Metric(
            "prob", target=args.target)
        result = engine.run(args.prompt, metric=metric, views=Views(attribution=True, sinks=True),
                            top_k=args.top_k)
    except (MechscopeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = engine.info
    print(f"model {info.name} ({info.family}, {info.n_layers} layers x {info.n_heads} heads, "
          f"{info.device}, {info.dtype})")
    if result.truncated_from:
        print(f"prompt truncated from {result.truncated_from} to {len(result.token_ids)} tokens")
    print("tokens: " + " ".join(f"{i}:{t!r}" for i, t in enumerate(result.tokens)))
    if result.metric_info is not None:
        for warning in result.metric_info.warnings:
            print(f"note: {warning}")
    print(f"\ntop-{len(result.top)} next tokens:")
    for rank, tok in enumerate(result.top, 1):
        print(f"  {rank:2d}. {tok.text!r:16} p={tok.prob:.4f}  logit={tok.logit:.3f}")
    if result.metric is not None and result.metric_info is not None:
        label = {"logit_diff": f"logit({args.target!r}) - logit({args.foil!r})",
                 "prob": f"p({args.target!r})", "loss": f"-log p({args.target!r})"}[metric.kind]
        print(f"\nmetric {label} = {result.metric:.4f}")
    if result.attribution is not None:
        print(f"\nheads with the largest direct logit attribution ({result.attribution.direction}):")
        for layer, head, value in result.attribution.top_heads(args.heads):
            print(f"  L{layer}.H{head:<3d} {value:+.4f}")
        attr = result.attribution
        print(f"  (sum of all parts {attr.parts_sum():+.4f} = total {attr.total:+.4f})")
    return 0
