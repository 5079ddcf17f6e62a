"""`mechscope` with no sub-command: the interactive workbench."""

from __future__ import annotations

import argparse

from mechscope.cli.common import model_settings


def run_workbench(args: argparse.Namespace) -> int:
    """Open the TUI on the model the options name; returns the exit code the app ends with."""
    from mechscope.tui.app import run_app

    settings = model_settings(args)
    args.model, args.device, args.dtype = settings["source"], settings["device"], settings["dtype"]
    return run_app(args)
