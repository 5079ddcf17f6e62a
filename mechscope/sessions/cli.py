"""Sub-commands `sessions`, `replay` and `export`. Imports nothing heavy until a command runs.

Exit codes: 0 success (replay: every step matches), 1 replay drift, 2 the session or model cannot
be used (missing, corrupt, newer schema, model fails to load), printed as one line naming file and line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

COMMANDS = ("sessions", "replay", "export")


def add_parsers(subparsers: argparse._SubParsersAction,
                add_model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `sessions`, `replay` and `export` on the main parser's sub-parsers."""
    sessions = subparsers.add_parser("sessions", help="list, show, rename or delete recorded sessions")
    actions = sessions.add_subparsers(dest="sessions_action", metavar="ACTION")
    actions.add_parser("list", help="list sessions (the default)")
    show = actions.add_parser("show", help="print a session's events, one per line")
    show.add_argument("name", help="session name or folder")
    rename = actions.add_parser("rename", help="rename a session")
    rename.add_argument("name", help="session name or folder")
    rename.add_argument("new_name")
    remove = actions.add_parser("rm", help="delete a session")
    remove.add_argument("name", help="session name or folder")
    remove.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    replay = subparsers.add_parser(
        "replay", help="re-run a session's runs and compare them with what was recorded",
        description="Replay a session headlessly on its recorded model (or --model) and print each "
        "step's recorded and recomputed outcome. Exit 0 when all match, 1 on drift, 2 when the "
        "session or model cannot be used.")
    replay.add_argument("name", help="session name or folder")
    replay.add_argument("--check", action="store_true",
                        help="compact table only (for CI); details are printed for drifting steps")
    add_model_args(replay)
    replay.set_defaults(model=None)

    export = subparsers.add_parser("export", help="write a Python script reproducing a session's runs")
    export.add_argument("name", help="session name or folder")
    export.add_argument("-o", "--output", help="output file ('-' for stdout; default ./NAME.py)")


def dispatch(args: argparse.Namespace) -> int:
    """Run the sub-command in `args.command`; returns the process exit code."""
    from mechscope.sessions.errors import SessionError

    handlers = {"sessions": _cmd_sessions, "replay": _cmd_replay, "export": _cmd_export}
    handler = handlers.get(args.command)
    if handler is None:
        print(f"error: unknown command {args.command!r}", file=sys.stderr)
        return 2
    try:
        return handler(args)
    except SessionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _cmd_sessions(args: argparse.Namespace) -> int:
    from mechscope.sessions.store import Session

    action = getattr(args, "sessions_action", None) or "list"
    if action == "list":
        summaries = Session.list()
        if not summaries:
            from mechscope.sessions.paths import sessions_root

            print(f"no sessions yet (they are stored in {sessions_root()})")
            return 0
        rows = [(s.name, s.model, s.created[:16].replace("T", " "), str(s.n_events),
                 f"unusable: {s.error}" if s.error else repr(s.last_prompt)) for s in summaries]
        _print_table(("name", "model", "created", "events", "last prompt"), rows, last_width=60)
        return 0
    if action == "show":
        session = Session.open(args.name)
        for warning in session.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for event in session.events:
            fields = " ".join(f"{k}={_short(v)}" for k, v in event.payload.items())
            print(f"{event.seq:5d} {event.kind:<17} {fields}")
        return 0
    if action == "rename":
        session = Session.open(args.name)
        old = session.name
        session.rename(args.new_name)
        print(f"renamed {old} -> {session.name}")
        return 0
    session = Session.open(args.name)
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"error: refusing to delete {session.name!r} without --yes", file=sys.stderr)
            return 2
        answer = input(f"delete session {session.name!r} ({len(session)} events)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("kept")
            return 0
    session.delete()
    print(f"deleted {session.name}")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from mechscope.sessions.store import Session

    session = Session.open(args.name)
    for warning in session.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    recorded_source = session.model_source
    if args.model is None:
        if recorded_source is None:
            print(f"error: session {session.name!r} records no model; pass --model", file=sys.stderr)
            return 2
        args.model = recorded_source
    from mechscope.cli import load_engine_or_exit

    engine = load_engine_or_exit(args)
    if engine is None:
        if args.model == recorded_source:
            print("hint: replay on another model with --model", file=sys.stderr)
        return 2
    from mechscope.sessions.replay import count_steps, replay, session_tolerance

    tolerance = session_tolerance(session, engine)
    print(f"session {session.name}: {count_steps(session)} steps on {args.model} "
          f"({engine.info.device}, {engine.info.dtype}); {tolerance.describe()}")
    if args.model != recorded_source:
        print(f"note: recorded on {recorded_source!r}")
    if args.check:
        print(f"{'seq':>5}  {'kind':<8} {'recorded (top-1 | metric)':<34} {'recomputed':<34} status")

    def show(step) -> None:
        if args.check:
            recorded, recomputed = _clip(step.recorded_short, 34), _clip(step.recomputed_short, 34)
            print(f"{step.seq:>5}  {step.kind:<8} {recorded:<34} {recomputed:<34} {step.status}")
        else:
            print(f"seq {step.seq} {step.kind}: {step.status}")
            print(f"  recorded   {step.recorded}")
            print(f"  recomputed {step.recomputed}")
        if step.detail:
            print(f"{'':>7}-> {step.detail}" if args.check else f"  -> {step.detail}")
        sys.stdout.flush()

    steps = replay(session, engine, on_step=show, tolerance=tolerance)
    drifted = [step for step in steps if not step.matches]
    print(f"{len(steps)} steps: {len(steps) - len(drifted)} ok, {len(drifted)} drifted")
    return 1 if drifted else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from mechscope.sessions.export import export_script
    from mechscope.sessions.store import Session

    session = Session.open(args.name)
    for warning in session.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    text = export_script(session)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    output = args.output or f"{session.name}.py"
    try:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        print(f"error: cannot write {output} ({exc.strerror})", file=sys.stderr)
        return 2
    os.chmod(output, 0o755)
    print(f"wrote {output}: python {output} [MODEL]")
    return 0


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _short(value: object, width: int = 60) -> str:
    import json

    return _clip(json.dumps(value, ensure_ascii=False), width)


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], last_width: int) -> None:
    rows = [row[:-1] + (_clip(row[-1], last_width),) for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
