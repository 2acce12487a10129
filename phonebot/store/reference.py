"""Booking references a caller can hear and say back: six characters, none that sound or look alike."""

from __future__ import annotations

import re
import secrets

# No 0/O, 1/I/L: they are confused on the phone and on paper. 31 symbols, six places: about
# 887 million references, so a fresh one practically never collides (the store retries if it does).
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
LENGTH = 6


def new_reference() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def normalize(said: str) -> str:
    """What a caller or model wrote for a reference, as stored: upper case, no spaces or dashes."""
    return re.sub(r"[\s\-_.,/]", "", said).upper()


def spoken(reference: str) -> str:
    """`K7M4PX` as `K 7 M, 4 P X`: one character at a time, in two groups of three."""
    half = len(reference) // 2
    return ", ".join(" ".join(group) for group in (reference[:half], reference[half:]) if group)
