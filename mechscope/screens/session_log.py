"""The session log's commands: a note into it, retrying what could not be saved, the sessions screen."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mechscope.screens.workbench import WorkbenchScreen


class SessionLogPart:
    """Owns the commands that write to the session log or switch sessions (`n`, Retry saving, `S`)."""

    def __init__(self, screen: WorkbenchScreen) -> None:
        self.screen = screen

    def commands(self) -> dict[str, Callable[..., object]]:
        return {"note": self.note, "retry_saving": self.retry_saving, "sessions": self.sessions}

    def note(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen

        def done(text: str | None) -> None:
            if text:
                recorder = self.screen.bench.recorder
                recorder.note(text)
                self.screen.say("note saved" if recorder.saved else
                                "note not saved: no session" if recorder.session is None else "note not saved")
                self.screen.update_title()

        self.screen.app.push_screen(AskValueScreen("note", "a note for the session log"), done)

    def retry_saving(self) -> None:
        recorder = self.screen.bench.recorder
        if not recorder.unsaved:
            self.screen.say("nothing waits to be saved")
            return
        left = recorder.retry_unsaved()
        self.screen.say(f"{left} still not saved" if left else "saved everything that was waiting")
        self.screen.update_title()

    def sessions(self) -> None:
        open_sessions = getattr(self.screen.app, "open_sessions", None)
        if open_sessions is not None:
            open_sessions()
