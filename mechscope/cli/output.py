"""Running a sessions sub-command: SessionError becomes one clipped `error:` line and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from mechscope.cli.common import clip

MAX_ERROR = 400  # characters of an error message shown; a crafted file can hold megabyte values


def guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command so session errors print one line (exit 2) and a closed pipe ends quietly."""

    def run(args: argparse.Namespace) -> int:
        from mechscope.sessions.errors import SessionError

        try:
            return handler(args)
        except SessionError as exc:
            print(f"error: {printable(str(exc))}", file=sys.stderr)
            return 2
        except BrokenPipeError:  # output piped into `head`: stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1

    return run


def printable(text: str, width: int = MAX_ERROR) -> str:
    """One line, clipped, that any terminal encoding can print (lone surrogates escaped)."""
    line = " ".join(text.splitlines()) if "\n" in text or "\r" in text else text
    line = clip(line, width)
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    return line.encode(encoding, errors="backslashreplace").decode(encoding, errors="replace")
