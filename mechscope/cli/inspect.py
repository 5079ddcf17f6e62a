"""`mechscope inspect`: run one prompt and print predictions and the heads that matter most."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mechscope.cli.common import IOI_PROMPT, add_model_args, load_engine_or_exit, positive_int


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect", help="run one prompt and print predictions and top heads",
        description="Run one prompt on the model and print the next-token predictions, the metric "
        "(target minus foil logit) and the heads whose direct contribution to it is largest.")
    add_model_args(parser)
    parser.add_argument("prompt", nargs="?", default=IOI_PROMPT, help="the prompt (default: the IOI prompt)")
    parser.add_argument("--target", default=" Mary", help="target token text (default ' Mary')")
    parser.add_argument("--foil", default=" John", help="foil token text (default ' John')")
    parser.add_argument("--top-k", type=positive_int, default=10, help="how many next tokens to list")
    parser.add_argument("--heads", type=positive_int, default=10, help="how many top heads to list")
    parser.set_defaults(run=run, uses_model=True)


def run(args: argparse.Namespace) -> int:
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
