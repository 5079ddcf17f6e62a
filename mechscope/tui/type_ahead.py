"""Keys typed ahead of a dialog go into it, in order: a burst that opens a dialog and types into it
(tmux `send-keys : L 2 0 Enter`, a paste after a key, key repeat) reaches the dialog's field.

Textual hands each key of a burst to the widget focused when the key arrives, so the keys after the
one that opens a dialog reach the screen beneath it, bubble up to the app under the dialog's
bindings and are dropped; keys that arrive before the dialog's field has focus are dropped the same
way. The app gives such keys here: each is kept with its dialog and handed to the dialog's focused
widget, in the order typed, once it has one.
"""

from __future__ import annotations

import weakref

from textual import events
from textual._time import get_time
from textual.app import App
from textual.screen import ModalScreen, Screen
from textual.timer import Timer

FOCUS_WAIT_S = 0.2  # a dialog with nothing to focus gets its typed-ahead keys after this long
POLL_S = 0.01
RETYPED = "mechscope_retyped"
CLOSING_KEYS = ("enter", "escape")  # keys that submit or close a dialog
CLOSE_WAIT_S = 1.0  # a dialog still open this long after one of them refused it: the keys go on into it


def retyped(key: str, character: str | None) -> events.Key:
    """A kept key typed again, marked so it is not kept a second time."""
    event = events.Key(key, character)
    setattr(event, RETYPED, True)
    return event


class TypeAhead:
    """The dialogs' opening times and the keys typed ahead of them, for one app."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.opened: weakref.WeakKeyDictionary[Screen, float] = weakref.WeakKeyDictionary()
        self.pending: list[tuple[Screen, str, str | None]] = []
        self.waited = 0.0
        self.timer: Timer | None = None
        self.closing: tuple[Screen, float] | None = None  # a dialog sent a closing key, and when

    def opening(self, screen: Screen) -> None:
        """`screen` is being pushed now."""
        self.opened[screen] = get_time()  # the clock keys are stamped with

    def take(self, event: events.Key) -> bool:
        """Keep a key typed before the dialog on top opened, or before it focused anything, or after
        keys still kept; False for any other key (bindings and widgets have it as usual)."""
        if getattr(event, RETYPED, False):  # typed again from here: the dialog has it, as typed now
            return False
        screen = self.app.screen
        if not isinstance(screen, ModalScreen) or screen not in self.opened:
            return False
        if event.time >= self.opened[screen] and screen.focused is not None and not self.pending:
            return False
        self.pending.append((screen, event.key, event.character))
        self.deliver()
        return True

    def deliver(self) -> None:
        """Once the dialog has focused its field (or has had time to), type the kept keys again, one
        at a time: each goes to the focused widget, and the next only after it, the dialog and the
        app have handled it (a key that submits or closes the dialog has done so). Keys left when the
        dialog has closed go to the app, for whatever is on top now."""
        if self.closing is not None:
            dialog, sent = self.closing
            if dialog is self.app.screen and get_time() - sent < CLOSE_WAIT_S:
                if self.timer is None:
                    self.timer = self.app.set_timer(POLL_S, self.poll)
                return
            self.closing = None
        if not self.pending:
            return
        screen, key, character = self.pending[0]
        if screen is not self.app.screen:
            keys, self.pending = self.pending, []
            for _, key, character in keys:
                self.app.post_message(retyped(key, character))
            return
        if screen.focused is None and self.waited < FOCUS_WAIT_S:
            if self.timer is None:
                self.timer = self.app.set_timer(POLL_S, self.poll)
            return
        self.pending.pop(0)
        self.waited = 0.0
        target = screen.focused or screen
        event = retyped(key, character)
        event._set_forwarded()  # as the app forwards a key: one it does not handle bubbles back to the bindings
        target.post_message(event)
        if key in CLOSING_KEYS:  # the next key waits for the dialog to close (or to stay, refusing)
            self.closing = (screen, get_time())
            self.timer = self.app.set_timer(POLL_S, self.poll)
        else:  # the next key once the widget, the dialog and the app have handled this one
            target.call_later(screen.call_later, self.app.call_later, self.deliver)

    def poll(self) -> None:
        self.timer = None
        self.waited += POLL_S
        self.deliver()
