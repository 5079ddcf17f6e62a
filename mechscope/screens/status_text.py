"""The header and status lines as text, composed from the engine, the recorder and the Workbench."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from mechscope.engine.backend_info import backend_status
from mechscope.tui.commands import key_of
from mechscope.tui.widgets.head_grid import HeadGrid
from mechscope.workbench.controller import Workbench
from mechscope.workbench.recorder import SessionRecorder


def model_title(engine: Any) -> Text:
    """The model, its placement and size, the server it is attached to and the backend's note."""
    info = engine.info
    title = Text()
    title.append(info.name, style="bold")
    title.append(f" │ {info.device} {info.dtype} │ {info.n_layers} layers × {info.n_heads} heads")
    server = getattr(engine, "place", None)
    if server is not None:
        title.append(f" │ attached to {getattr(server, 'name', server)}", style="cyan")
    if status := backend_status(engine):
        title.append(f" │ {status}", style="yellow")
    return title


def session_title(recorder: SessionRecorder) -> Text:
    """The session's name and save state: saved in green, a failed write in red."""
    line = recorder.describe()
    session = Text()
    if recorder.session is None:
        session.append(line, style="yellow")
    elif recorder.saved:
        head = f"session {recorder.name} "
        session.append(head)
        session.append("saved", style="green")
        session.append(line[len(head) + len("saved"):], style="yellow")
    else:
        session.append(line, style="bold red")
    return session


def status_text(bench: Workbench, grid: HeadGrid, ready: bool) -> Text:
    """The selected head, its grid value and interventions, then the error or message, then key hints."""
    text = Text()
    selected = bench.selected
    if selected is not None and ready:
        layer, head = selected
        text.append(f"L{layer}.H{head}", style="bold")
        value = grid.value_at(layer, head)
        if value is not None:
            direction = f" {grid.metric_direction}" if grid.metric_direction else ""
            text.append(f" {grid.metric_name.replace('_', '-')}{direction} {value:+.4g}")  # as the grid's title
        stack = bench.edits.stack
        marks = [bench.edits.label(e) for e in (*stack.on_head(layer, head), *stack.on_layer(layer))
                 if e.intervention.enabled]
        if marks:
            listed = ", ".join(marks)
            if len(listed) > 40:  # keep room for the message after it
                listed = f"{len(marks)} interventions here"
            text.append(f" [{listed}]", style="yellow")
        text.append(" │ ")
    if bench.error:
        text.append("E:", style="dim")  # before the error: the line may cut its end
        text.append(bench.error, style="bold red")
    else:
        text.append(bench.info)
    text.append(f" │ {key_of('show_message')} full message  {key_of('help')} keys  ctrl+p commands"
                if bench.error else f" │ {key_of('help')} keys  ctrl+p commands", style="dim")
    return text
