"""Where sessions live and how they are named."""

from __future__ import annotations

import datetime as _dt
import os
import random
import re
from pathlib import Path

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
SCHEMA_VERSION = 1
MANIFEST_FILE = "session.json"
EVENTS_FILE = "events.jsonl"
TENSORS_DIR = "tensors"
LOCK_INFO_FILE = ".writer.json"  # who holds the write lock: pid, host, since (while it is held)

_ADJECTIVES = ("amber", "brisk", "calm", "deft", "eager", "fleet", "gentle", "hidden", "ivory", "jolly",
               "keen", "lucid", "mellow", "nimble", "opal", "quiet", "rapid", "sly", "tidy", "vivid")
_NOUNS = ("otter", "heron", "lynx", "finch", "badger", "marten", "plover", "gecko", "ibis", "koala",
          "lemur", "newt", "osprey", "puffin", "quail", "raven", "stoat", "tapir", "vole", "wren")


def sessions_root() -> Path:
    """`$MECHSCOPE_DATA_DIR/sessions` when set, else the platform's user data dir + `/sessions`."""
    override = os.environ.get("MECHSCOPE_DATA_DIR")
    if override:
        return Path(override).expanduser() / "sessions"
    import platformdirs

    return Path(platformdirs.user_data_dir("mechscope")) / "sessions"


def check_name(name: str) -> str:
    """Return `name` if it can be a folder name on every platform, else raise ValueError.

    The one name rule, applied wherever a name enters (create, open by name, rename, rm, --session,
    the sessions screen): printable ASCII letters, digits, '.', '_' and '-', at most 80, no separators.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        text = repr(name) if len(str(name)) <= 60 else repr(str(name)[:57]) + "…"
        raise ValueError(
            f"bad session name {text}: use letters, digits, '.', '_' and '-' (at most 80, "
            "starting with a letter or digit)"
        )
    return name


def generate_name(root: Path, hint: str = "", now: _dt.datetime | None = None) -> str:
    """A fresh name like `2026-11-23-1830-ioi` (from `hint`) or `2026-11-23-1830-brisk-otter`."""
    stamp = (now or _dt.datetime.now()).strftime("%Y-%m-%d-%H%M")
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:24]
    if not slug:
        rng = random.Random()
        slug = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
    name = f"{stamp}-{slug}"
    candidate, counter = name, 2
    while (root / candidate).exists():
        candidate = f"{name}-{counter}"
        counter += 1
    return candidate
