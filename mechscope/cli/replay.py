"""`mechscope replay`: re-run a session's steps on a model and compare them with what was recorded."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mechscope.cli.common import add_model_args, clip, load_engine_or_exit
from mechscope.cli.output import guarded, printable


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay", help="re-run a session's runs and compare them with what was recorded",
        description="Replay a session headlessly on its recorded model (or --model) and print each "
        "step's recorded and recomputed outcome. Exit 0 when all match, 1 on drift, 2 when the "
        "session or model cannot be used.")
    parser.add_argument("name", help="session name or folder")
    parser.add_argument("--check", action="store_true",
                        help="compact table only (for CI); details are printed for drifting steps")
    parser.add_argument("--steps", metavar="LIST",
                        help="only these steps, by the seq column: e.g. 3,7-9")
    parser.add_argument("--kind", metavar="KINDS",
                        help="only steps of these request kinds: e.g. run,sweep")
    add_model_args(parser)
    parser.set_defaults(run=guarded(run), uses_model=True)


def run(args: argparse.Namespace) -> int:
    from mechscope.cli.replay_progress import Progress, parse_kinds, parse_steps, selector
    from mechscope.requests.kinds import REQUEST_TYPES
    from mechscope.sessions.events import work_kind
    from mechscope.sessions.store import Session

    try:
        steps_wanted = None if args.steps is None else parse_steps(args.steps)
        kinds_wanted = None if args.kind is None else parse_kinds(args.kind, set(REQUEST_TYPES))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    select = selector(steps_wanted, kinds_wanted, work_kind)
    session = Session.open(args.name)
    for warning in session.warnings:
        print(f"warning: {printable(warning)}", file=sys.stderr)
    recorded_source = session.model_source
    source = args.model if args.model is not None else recorded_source
    if source is None:
        print(f"error: session {session.name!r} records no model; pass --model", file=sys.stderr)
        return 2
    if args.model is None:
        from mechscope.cli.common import UsageError, check_model_source

        try:
            check_model_source(source)
        except UsageError as exc:
            print(f"error: the recorded model cannot be loaded: {printable(str(exc))}", file=sys.stderr)
            print("hint: replay on another model with --model", file=sys.stderr)
            return 2
    engine = load_engine_or_exit(args, source=source)
    if engine is None:
        if source == recorded_source:
            print("hint: replay on another model with --model", file=sys.stderr)
        return 2
    from mechscope.requests.kinds import REQUEST_TYPES
    from mechscope.sessions.replaying import count_steps, replay, session_tolerance

    kind_width = max(map(len, REQUEST_TYPES))  # the widest kind name keeps the columns aligned

    tolerance = session_tolerance(session, engine)
    total = count_steps(session, select)
    print(f"session {session.name}: {total} steps on {printable(source, 200)} "
          f"({engine.info.device}, {engine.info.dtype}); {tolerance.describe()}")
    if source != recorded_source:
        print(f"note: recorded on {printable(repr(recorded_source), 200)}")
    if args.check:
        print(f"{'seq':>5}  {'kind':<{kind_width}} {'recorded (top-1 | metric)':<34} {'recomputed':<34} status")

    def show(step: Any) -> None:
        if args.check:
            recorded, recomputed = clip(step.recorded_short, 34), clip(step.recomputed_short, 34)
            print(printable(f"{step.seq:>5}  {step.kind:<{kind_width}} {recorded:<34} {recomputed:<34} "
                            f"{step.status}", 10_000))
        else:
            print(f"seq {step.seq} {step.kind}: {step.status}")
            print(printable(f"  recorded   {step.recorded}", 10_000))
            print(printable(f"  recomputed {step.recomputed}", 10_000))
        if step.detail:
            print(printable(f"{'':>7}-> {step.detail}" if args.check else f"  -> {step.detail}"))
        sys.stdout.flush()

    progress = Progress(total)

    def started(event: Any) -> None:
        progress.start(event.seq, str(work_kind(event)))

    try:
        steps = replay(session, engine, on_step=show, tolerance=tolerance, select=select,
                       on_start=started)
    finally:
        progress.close()
    drifted = [step for step in steps if not step.matches]
    print(f"{len(steps)} steps: {len(steps) - len(drifted)} ok, {len(drifted)} drifted")
    recorded = sum(float(event.get("seconds", 0.0)) for event in session.work()
                   if select is None or select(event))
    print(f"replayed in {progress.seconds:.1f} s; the recorded steps took {recorded:.1f} s")
    return 1 if drifted else 0
