"""Tools that act on the call itself: hang up, or hand the caller to a person."""

from __future__ import annotations

from typing import Any

from phonebot.tools.context import ToolContext, ToolError
from phonebot.tools.spec import tool


async def end_call(ctx: ToolContext, reason: str = "") -> dict[str, Any]:
    """End the phone call. Say goodbye first; the line closes once your goodbye has been heard.

    Args:
        reason: Why the call is ending, in a few words (for the call record).
    """
    if ctx.control is None:
        raise ToolError("unavailable", "The call cannot be ended from here.")
    await ctx.control.end_call()
    return {"ok": True, "status": "The call will end after your goodbye."}


@tool(phone_only=True)
async def transfer_call(ctx: ToolContext, reason: str = "") -> dict[str, Any]:
    """Transfer the caller to a member of staff. Tell the caller you are transferring them first.

    Use it when the caller asks for a person, or needs something you cannot do.

    Args:
        reason: What the caller needs, in a few words, for the person taking the call.
    """
    if ctx.control is None:
        raise ToolError("unavailable", "Transfers are not available.")
    await ctx.control.transfer()
    return {"ok": True, "status": "The caller will be transferred after you finish speaking."}
