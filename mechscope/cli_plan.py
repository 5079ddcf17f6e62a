"""Sub-command `plan`: the memory a model will need per device, before loading any weight."""

from __future__ import annotations

import argparse
import sys

COMMANDS = ("plan",)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `plan` on the main parser's sub-parsers."""
    parser = subparsers.add_parser(
        "plan", help="memory per device for weights, caches and a head sweep, before loading",
        description="Read a model's config (or a GGUF header) only and print, per device, the memory "
        "its weights, the engine's caches and a head sweep will need, and whether that fits. "
        "Exit 0 when it fits, 1 when it does not, 2 on a bad model or argument.")
    parser.add_argument("--model", default="demo", help="'demo', a local HF folder, a .gguf file or a cached hub id")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (without a device map)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    add_placement_args(parser)
    parser.add_argument("--prompt-tokens", type=int, default=64,
                        help="typical prompt length the cache estimate assumes (default 64)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the model folder (off by default)")


def add_placement_args(parser: argparse.ArgumentParser) -> None:
    """`--device-map` and `--max-memory`, shared by every command that loads a model."""
    parser.add_argument("--device-map", default=None,
                        help="auto, balanced, sequential or FILE.json (module name -> device): "
                        "accelerate splits the model over GPUs, the CPU and disk")
    parser.add_argument("--max-memory", default=None,
                        help="per-device budget for the weights, e.g. 0=20GiB,1=20GiB,cpu=64GiB")


def dispatch(args: argparse.Namespace) -> int:
    from mechscope.engine.errors import MechscopeError
    from mechscope.engine.plan import format_plan, plan

    if args.prompt_tokens < 1:
        print("error: --prompt-tokens must be at least 1", file=sys.stderr)
        return 2
    try:
        result = plan(args.model, device_map=args.device_map, max_memory=args.max_memory, dtype=args.dtype,
                      device=args.device, prompt_tokens=args.prompt_tokens,
                      trust_remote_code=args.trust_remote_code)
    except MechscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_plan(result))
    return 0 if result.fits else 1
