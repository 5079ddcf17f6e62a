"""Errors the engine raises for user mistakes: one clear line each, never a traceback in the UI."""

from __future__ import annotations


class MechscopeError(Exception):
    """Base class: the message is a complete sentence meant for the user."""


class LoadError(MechscopeError):
    """A model could not be loaded (missing path, offline hub id, unsupported or corrupt model)."""


class UnsupportedArchitecture(LoadError):
    """The model's architecture has no adapter."""


class InterventionError(MechscopeError):
    """An intervention does not fit the model or the prompt; the message names the intervention."""


class InvalidIntervention(InterventionError, ValueError):
    """An intervention's own fields are wrong (e.g. a non-finite scale), whatever the model; raised when
    it is built, so dialogs, session loading and the engine share one rule. Also a ValueError, as
    every other malformed field is."""


class PromptError(MechscopeError):
    """A prompt or metric token that cannot be used (empty prompt, empty target...)."""


class Cancelled(MechscopeError):
    """A run or sweep was stopped by its `should_stop` callback."""


class OutOfMemory(MechscopeError):
    """The device ran out of memory; caches were dropped and the engine is still usable."""


class EngineUnreachable(MechscopeError):
    """The engine server cannot be reached (not running, or the connection dropped)."""
