"""`mechscope sessions`: list, show, rename and delete recorded sessions."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mechscope.cli.common import clip, print_table
from mechscope.cli.output import guarded, printable


def register(subparsers: Any) -> None:
    sessions = subparsers.add_parser(
        "sessions", help="list, show, rename or delete recorded sessions",
        description="Recorded sessions in the data folder (MECHSCOPE_DATA_DIR, else the platform's "
        "data folder). With no action, list them.")
    sessions.set_defaults(run=guarded(run))
    actions = sessions.add_subparsers(dest="sessions_action", metavar="ACTION")
    actions.add_parser("list", help="list sessions (the default)")
    show = actions.add_parser("show", help="print a session's events, one per line")
    show.add_argument("name", help="session name or folder")
    rename = actions.add_parser("rename", help="rename a session")
    rename.add_argument("name", help="session name")
    rename.add_argument("new_name")
    remove = actions.add_parser("rm", help="delete a session")
    remove.add_argument("name", help="session name (not a path)")
    remove.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "sessions_action", None) or "list"
    return {"list": _list, "show": _show, "rename": _rename, "rm": _remove}[action](args)


def _list(args: argparse.Namespace) -> int:
    from mechscope.sessions.store import Session

    summaries = Session.list()
    if not summaries:
        from mechscope.sessions.paths import sessions_root

        print(f"no sessions yet (they are stored in {sessions_root()})")
        return 0
    rows = [(printable(s.name, 80), printable(s.model, 40), s.created[:16].replace("T", " "),
             str(s.n_events),
             f"unusable: {printable(s.error, 200)}" if s.error else printable(repr(s.last_prompt), 200))
            for s in summaries]
    print_table(("name", "model", "created", "events", "last prompt"), rows, last_width=60)
    return 0


def _show(args: argparse.Namespace) -> int:
    from mechscope.sessions.store import Session

    session = Session.open(args.name)
    for warning in session.warnings:
        print(f"warning: {printable(warning)}", file=sys.stderr)
    model = session.manifest.get("model")
    if isinstance(model, dict):  # on stderr, like the warnings: stdout stays one line per event
        backend = model.get("backend", {"backend": "native"})
        print(f"model {printable(str(model.get('source')), 200)} · {printable(str(model.get('device')), 40)} "
              f"{printable(str(model.get('dtype')), 40)} · backend {printable(json.dumps(backend), 400)}",
              file=sys.stderr)
    for event in session.events:
        fields = " ".join(f"{k}={_short(v)}" for k, v in event.payload.items())
        print(f"{event.seq:5d} {event.kind:<17} {printable(fields, 10_000)}")
    return 0


def _rename(args: argparse.Namespace) -> int:
    from mechscope.sessions.store import rename_session

    new_path = rename_session(args.name, args.new_name)
    print(f"renamed {args.name} -> {new_path.name}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from mechscope.sessions.store import remove_session, session_folder, summarise

    folder = session_folder(args.name)
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"error: refusing to delete {args.name!r} without --yes", file=sys.stderr)
            return 2
        summary = summarise(folder)
        answer = input(f"delete session {args.name!r} ({summary.n_events} events)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("kept")
            return 0
    remove_session(args.name)
    print(f"deleted {args.name}")
    return 0


def _short(value: object, width: int = 60) -> str:
    return clip(json.dumps(value, ensure_ascii=False), width)
