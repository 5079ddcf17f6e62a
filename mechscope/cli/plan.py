"""Sub-command `plan`: the memory a model will need per device, before loading any weight."""

from __future__ import annotations

import argparse
import sys

from mechscope.cli.common import add_model_args, model_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register `plan`: it reads the model's options like every command that loads a model."""
    parser = subparsers.add_parser(
        "plan", help="memory per device for weights, caches and a head sweep, before loading",
        description="Read a model's config (or a GGUF header) only and print, per device, the memory "
        "its weights, the engine's caches and a head sweep will need, and whether that fits. "
        "Exit 0 when it fits, 1 when it does not, 2 on a bad model or argument.")
    add_model_args(parser)
    parser.add_argument("--prompt-tokens", type=int, default=64,
                        help="typical prompt length the cache estimate assumes (default 64)")
    parser.set_defaults(run=dispatch, uses_model=True)


def dispatch(args: argparse.Namespace) -> int:
    from mechscope.engine.errors import MechscopeError
    from mechscope.engine.plan import format_plan, plan

    if args.prompt_tokens < 1:
        print("error: --prompt-tokens must be at least 1", file=sys.stderr)
        return 2
    try:
        settings = model_settings(args)
        result = plan(settings["source"], device_map=settings["device_map"],
                      max_memory=settings["max_memory"], dtype=settings["dtype"],
                      device=settings["device"], prompt_tokens=args.prompt_tokens,
                      trust_remote_code=settings["trust_remote_code"])
    except MechscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_plan(result))
    return 0 if result.fits else 1
