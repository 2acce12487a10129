"""`phonebot doctor --online` for Gemini: open one Live session exactly as a call would (same
model, same setup) and close it at once. google-genai's errors become one plain line here."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from google.genai import errors
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from phonebot.business import Business
from phonebot.call.ports import CallInfo
from phonebot.gemini.live import GeminiLive
from phonebot.settings import MissingSetting, Settings
from phonebot.tools.spec import ToolSpec

OPEN_TIMEOUT_S = 15.0


async def open_and_close(
    settings: Settings, tools: Sequence[ToolSpec] = (), business: Business | None = None
) -> tuple[bool, str]:
    """(holds, what was found): a Live session opens with these settings, and is closed again."""
    where = "Vertex AI" if settings.vertex_ai else "the Gemini API"
    try:
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            session = await GeminiLive(settings, tools, business).connect(CallInfo(call_sid="doctor"))
            await session.close()
    except MissingSetting as error:
        return False, str(error)
    except errors.APIError as error:
        # The service closes the socket with a code and says why (a bad key, an unknown model).
        said = error.message or (error.details if isinstance(error.details, str) else error.status)
        return False, f"{where} refused a Live session with {settings.gemini_model} ({error.code}): {said}"
    except ConnectionClosed as error:
        # The same refusal, when it came before the SDK had sent its setup.
        code, reason = (error.rcvd.code, error.rcvd.reason) if error.rcvd else (1006, "the connection dropped")
        return False, f"{where} refused a Live session with {settings.gemini_model} ({code}): {reason}"
    except TimeoutError:
        return False, f"no Live session from {where} within {OPEN_TIMEOUT_S:.0f} s"
    except OSError as error:
        return False, f"cannot reach {where}: {error.strerror or error}"
    except InvalidHandshake as error:
        return False, f"{where} refused the connection: {error}"
    return True, f"a Live session with {settings.gemini_model} on {where} opened and closed"
