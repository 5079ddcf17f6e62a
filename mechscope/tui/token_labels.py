"""Tokens that are a piece of a UTF-8 character show their bytes (`<0xC3>`), never a bare "�".

Decoding such a token alone gives U+FFFD; the tokenizer's own piece still holds the byte, either as
`<0xC3>` (SentencePiece byte fallback) or as the GPT-2 byte-to-unicode character (`Ã`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

REPLACEMENT = "\ufffd"
BYTE_PIECE = re.compile(r"^(<0x[0-9A-Fa-f]{2}>)+$")


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode table (printable bytes map to themselves)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(kept)
    extra = 0
    for byte in range(256):
        if byte not in kept:
            kept.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(kept, chars, strict=True)}


def piece_bytes(piece: str) -> bytes | None:
    """The bytes a tokenizer piece stands for, when it is written as bytes; None otherwise."""
    if BYTE_PIECE.match(piece):
        return bytes(int(part, 16) for part in re.findall(r"0x([0-9A-Fa-f]{2})", piece))
    table = unicode_to_byte()
    if piece and all(char in table for char in piece):
        return bytes(table[char] for char in piece)
    return None


def byte_label(raw: bytes) -> str:
    """Bytes as they read on screen: the text that decodes, `<0xE2>` for each byte that does not."""
    text = raw.decode("utf-8", errors="replace")
    if REPLACEMENT not in text:
        return text
    return "".join(f"<0x{byte:02X}>" if byte >= 0x80 else chr(byte) for byte in raw)


def token_labels(engine: Any, ids: Sequence[int], texts: Sequence[str]) -> list[str]:
    """`texts` with every "�" token replaced by its bytes (the others unchanged)."""
    tokenizer = getattr(engine, "tokenizer", None)
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    labels = list(texts)
    for index, (token_id, text) in enumerate(zip(ids, texts, strict=False)):
        if REPLACEMENT not in text or convert is None:
            continue
        try:
            raw = piece_bytes(str(convert(int(token_id))))
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
        if raw is not None:
            labels[index] = byte_label(raw)
    return labels
