"""Errors raised for sessions that cannot be used: the message names the file and line."""

from __future__ import annotations


class SessionError(Exception):
    """A session is missing, corrupt, newer than this mechscope, or cannot be written.

    The message is one line meant for the user, as `path:line: what is wrong` where a line applies.
    """
