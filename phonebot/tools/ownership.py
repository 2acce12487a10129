"""Whether a booking is the caller's: the only ones whose details they hear, or that they change.

A booking is theirs when they call from the number it was made with, or when they give its
reference and the name it was booked under. Names are compared as people say them: case,
accents, punctuation, titles and spacing aside, and either may be the fuller one ("Lovelace" or
"Ada" for "Ada Lovelace", "Ada Lovelace" for "Ada"). A caller who gets reference and name wrong
a few times on one call is told nothing more on that call.
"""

from __future__ import annotations

import re
import unicodedata

from phonebot.store.desk import PHONE_TAIL_DIGITS, Appointment, clean_phone
from phonebot.tools.context import ToolContext, ToolError

MAX_FAILED_PROOFS = 5  # per call: enough for a caller who misremembers, too few to guess with
MIN_PHONE_DIGITS = 7
_TITLES = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "madam", "dame", "lord", "lady"})

NEEDS_NAME = (
    "This booking cannot be discussed on the strength of the number they are calling from. Ask the caller "
    "for the name the booking was made under, and pass it as customer_name with the reference."
)
NO_MATCH = (
    "No booking matches that reference and name. Ask the caller to check the reference (one character at "
    "a time) and the name it was booked under; do not say which of the two did not match."
)
TOO_MANY = (
    "Too many references and names did not match on this call, so no booking details can be given or "
    "changed now. Offer to take a message, or ask them to call from the number they booked with."
)


def same_number(calling: str, booked: str) -> bool:
    """Two numbers of one line: equal in E.164, or, when either is written nationally ("07700
    900123"), ending in the same digits."""
    a, b = clean_phone(calling), clean_phone(booked)
    if len(a.lstrip("+")) < MIN_PHONE_DIGITS or len(b.lstrip("+")) < MIN_PHONE_DIGITS:
        return False
    if a.startswith("+") and b.startswith("+"):
        return a == b
    return a[-PHONE_TAIL_DIGITS:] == b[-PHONE_TAIL_DIGITS:]


def name_words(name: str) -> list[str]:
    """`"Dr. Zoë O'Brien-Smith"` -> `["zoe", "obrien", "smith"]`."""
    folded = unicodedata.normalize("NFKD", name.casefold())
    plain = "".join(c for c in folded if not unicodedata.combining(c))
    plain = re.sub("['\u2019`]", "", plain)  # O'Brien (straight or curly) and OBrien are one name
    return [word for word in re.findall(r"\w+", plain) if word not in _TITLES]


def same_name(said: str, booked: str) -> bool:
    said_words, booked_words = name_words(said), name_words(booked)
    if not said_words or not booked_words:
        return False
    if "".join(said_words) == "".join(booked_words):  # "O Brien" for "O'Brien"
        return True
    return set(said_words) <= set(booked_words) or set(booked_words) <= set(said_words)


def check_owner(ctx: ToolContext, found: Appointment | None, customer_name: str | None) -> Appointment:
    """`found` (the booking a reference names, or None) if the caller has shown it is theirs; else
    a ToolError that tells the model what to ask for, and never whether the reference exists."""
    if len(ctx.failed_proofs) >= MAX_FAILED_PROOFS:
        raise ToolError("too_many_attempts", TOO_MANY)
    if found is not None and same_number(ctx.caller_number, found.phone):
        return found
    if not customer_name or not customer_name.strip():
        raise ToolError("needs_name", NEEDS_NAME)
    if found is None or not same_name(customer_name, found.customer_name):
        ctx.failed_proofs.append(found.reference if found is not None else "")
        raise ToolError("not_found", NO_MATCH)
    return found
