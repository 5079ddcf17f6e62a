"""Keys typed ahead of a dialog go into it, in order, and keys typed after one the dialog answers
wait for the answer: a burst that opens a dialog and types into it (tmux `send-keys : L 2 0 Enter
space`, a paste after a key, key repeat) reaches the dialog's field, and what follows the enter
reaches whatever is on top once the dialog has closed or refused.

Textual hands each key of a burst to the widget focused when the key arrives, so the keys after the
one that opens a dialog reach the screen beneath it, bubble up to the app under the dialog's
bindings and are dropped; keys that arrive before the dialog's field has focus are dropped the same
way; and a key that arrives while the dialog checks an entered value goes into the field it is about
to close. The app gives such keys here: each is kept with its dialog and handed to the dialog's
focused widget, in the order typed, once it has one and once the dialog has answered the keys before.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from textual import events
from textual._time import get_time
from textual.app import App, ScreenStackError
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Input, TextArea

from mechscope.screens.dialog import Dialog
from mechscope.tui.widgets.prompt_input import PromptInput

FOCUS_WAIT_S = 0.2  # a dialog with nothing to focus gets its typed-ahead keys after this long
POLL_S = 0.01
RETYPED = "mechscope_retyped"
CLOSING_KEYS = ("enter", "escape")  # keys that may close a modal screen that is not a Dialog
CLOSE_WAIT_S = 1.0  # such a screen still open this long after one of them: it stayed, the keys go on into it


def retyped(key: str, character: str | None) -> events.Key:
    """A kept key typed again, marked so it is not kept a second time."""
    event = events.Key(key, character)
    setattr(event, RETYPED, True)
    return event


def takes_text(focused: Widget | None, key: str, character: str | None) -> bool:
    """Whether the focused widget takes `key` as text: a printable character typed into a field (a
    prompt field only once entered), or enter in a text area."""
    if isinstance(focused, TextArea):
        return key == "enter" or (character is not None and character.isprintable())
    if isinstance(focused, Input) and not (isinstance(focused, PromptInput) and not focused.armed):
        return character is not None and character.isprintable()
    return False


class TypeAhead:
    """The dialogs' opening times, the keys typed ahead of them, and the answer the last is waiting for,
    for one app."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.opened: weakref.WeakKeyDictionary[Screen, float] = weakref.WeakKeyDictionary()
        self.pending: list[tuple[str, str | None]] = []  # kept keys, for whatever screen is on top as each goes
        self.waited = 0.0
        self.timer: Timer | None = None
        self.answered: Callable[[], bool] | None = None  # has the dialog answered the key last handed on?
        self.reached: events.Key | None = None  # the last key handed on that reached the app's bindings

    def opening(self, screen: Screen) -> None:
        """`screen` is being pushed now."""
        self.opened[screen] = get_time()  # the clock keys are stamped with

    @staticmethod
    def is_handed_on(event: events.Key) -> bool:
        """Whether `event` is a kept key typed again from here."""
        return getattr(event, RETYPED, False)

    @property
    def busy(self) -> bool:
        return bool(self.pending) or self.answered is not None

    def hold(self, event: events.Key) -> bool:
        """A key as it arrives, before anything acts on it: keep it while keys typed before it are kept
        or wait for an answer, and keep one the dialog on top will answer, so the keys after it wait."""
        if self.is_handed_on(event):
            return False
        screen = self.top()
        if screen is None:
            return False
        if not self.busy and (screen not in self.opened or self.awaits(screen, event.key, event.character) is None):
            return False
        self.keep(event)
        return True

    def take(self, event: events.Key) -> bool:
        """A key no widget took: keep it when typed before the dialog on top opened or focused anything,
        or after keys still kept; False for any other key (the app's bindings have it as usual)."""
        if self.is_handed_on(event):
            return False
        screen = self.top()
        if not isinstance(screen, ModalScreen) or screen not in self.opened:
            return False
        if event.time >= self.opened[screen] and screen.focused is not None and not self.busy:
            return False
        self.keep(event)
        return True

    def handled(self, event: events.Key) -> None:
        """The app has run `event`'s binding, or found none."""
        if self.is_handed_on(event):
            self.reached = event

    def keep(self, event: events.Key) -> None:
        self.pending.append((event.key, event.character))
        self.deliver()

    def awaits(self, screen: Screen, key: str, character: str | None) -> str | None:
        """What the keys after `key` wait for once `screen` has it: "answer" (a dialog closes or counts
        an answer), "binding" (the app has run the key's binding, a priority one as it takes the key),
        "clock" (a modal screen not ours closes, or has had CLOSE_WAIT_S), None (their turn: the key
        is typed into a field, or nothing is bound to it)."""
        binding = screen.active_bindings.get(key)
        if isinstance(screen, Dialog) and binding is not None and screen.answered_by(binding):
            return "answer"
        # a field runs its own bindings as the key reaches it, and takes what it types
        if binding is not None and not isinstance(binding.node, Input) \
                and not takes_text(screen.focused, key, character):
            return "binding"
        if key in CLOSING_KEYS and isinstance(screen, ModalScreen) and not isinstance(screen, Dialog):
            return "clock"
        return None

    def answer(self, kind: str | None, screen: Screen, event: events.Key) -> Callable[[], bool] | None:
        """When the dialog has answered `event`, handed on now: closed, or what `kind` says."""
        def closed() -> bool:
            return screen is not self.top()

        sent = get_time()
        if kind == "answer" and isinstance(screen, Dialog):
            before = screen.answers
            return lambda: closed() or screen.answers > before
        if kind == "binding":  # the clock in case a widget takes the key before it reaches the app
            return lambda: closed() or self.reached is event or get_time() - sent >= CLOSE_WAIT_S
        if kind == "clock":
            return lambda: closed() or get_time() - sent >= CLOSE_WAIT_S
        return None

    def deliver(self) -> None:
        """Once the key before has been answered, and the screen on top has focused a widget (or has
        had time to), type the next kept key again, as the app takes a key: its priority bindings,
        then the focused widget. The key after it waits for the answer `awaits` names (a key that
        submits or closes the dialog has done so), or, for a key typed into a field, until the app,
        the widget, the dialog and the app again have handled it. Once the dialog has closed, the keys
        left go on in the same way to whatever is on top now (a key among them may open another
        dialog, which the keys after it then reach)."""
        if self.answered is not None:
            if not self.answered():
                self.wait()
                return
            self.answered = None
        if not self.pending:
            return
        screen = self.top()  # once the dialog has closed, whatever is on top now
        if screen is None:  # the app is closing
            self.pending = []
            return
        if screen.focused is None and self.waited < FOCUS_WAIT_S:
            self.wait()
            return
        key, character = self.pending.pop(0)
        self.waited = 0.0
        kind = self.awaits(screen, key, character)
        event = retyped(key, character)
        self.app.post_message(event)
        self.answered = self.answer(kind, screen, event)
        if self.answered is not None:
            self.wait()
        else:
            self.app.call_later(self.after_taken, screen)

    def after_taken(self, screen: Screen) -> None:
        """The app has handed the key to the focused widget: the next once it, the dialog and the app
        have handled it."""
        target = screen.focused or screen
        target.call_later(screen.call_later, self.app.call_later, self.deliver)

    def top(self) -> Screen | None:
        """The screen on top; None once the app has closed its screens."""
        try:
            return self.app.screen
        except ScreenStackError:
            return None

    def wait(self) -> None:
        if self.timer is None:
            self.timer = self.app.set_timer(POLL_S, self.poll)

    def poll(self) -> None:
        self.timer = None
        self.waited += POLL_S
        self.deliver()
