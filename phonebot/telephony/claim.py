"""Which call a media stream carries, for any peer speaking the Media Streams protocol.

The stream's `start` names a CallSid; the token in its URL must have been issued for that very
call, unused and unexpired, and the call must have no stream yet (`CallStore.claim_stream`, one
transaction). Refused: close 1008, logged, and no model session is opened. Admitted: the call's
numbers and direction are what its signed webhook (or phonebot itself) recorded, never what
`start` says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

import structlog
from sqlalchemy.exc import SQLAlchemyError
from starlette.websockets import WebSocket

from phonebot.call.ports import CallInfo, Direction
from phonebot.logs import Skipped
from phonebot.store.calls import CallStore, StoredCall, StreamRefused
from phonebot.telephony.stream import MediaStream, Redirect, close_quietly, read_start

log = structlog.get_logger(__name__)

StreamHandler = Callable[[MediaStream], Awaitable[object]]


async def serve_stream(
    websocket: WebSocket, token: str, store: CallStore, on_stream: StreamHandler, redirect: Redirect
) -> None:
    """Admit an accepted stream and hand it to `on_stream` until the call ends; or refuse it."""
    stream = await _claim(websocket, token, store, redirect)
    if stream is None:
        return
    try:
        await on_stream(stream)
    finally:
        await stream.close()


async def _claim(websocket: WebSocket, token: str, store: CallStore, redirect: Redirect) -> MediaStream | None:
    skipped = Skipped(log)
    start = await read_start(websocket, skipped)
    if start is None:
        await close_quietly(websocket)
        return None
    try:
        call = await store.claim_stream(token, start.call_sid)
    except StreamRefused as refused:
        log.warning("stream.refused", reason=refused.reason, call_sid=start.call_sid)
        await websocket.close(code=1008, reason="this stream is not for this call")
        return None
    except (SQLAlchemyError, OSError) as error:
        log.error("stream.store_failed", call_sid=start.call_sid, error=repr(error))
        await websocket.close(code=1011, reason="try again")
        return None
    # The rest of this connection is the call's: its timers and closing lines carry it too.
    structlog.contextvars.bind_contextvars(call_sid=call.call_sid)
    return MediaStream(websocket, start, _call_info(call), redirect, skipped)


def _call_info(call: StoredCall) -> CallInfo:
    return CallInfo(
        call_sid=call.call_sid,
        from_number=call.from_number,
        to_number=call.to_number,
        direction=cast(Direction, call.direction),
        instructions=call.instructions,
        metadata=call.metadata_object,
    )
