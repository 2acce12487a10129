"""The one error shape of the HTTP API: `{"error": {"code", "message"}}`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from phonebot.settings import MissingSetting


def error_response(status: int, code: str | int, message: str, **extra: object) -> JSONResponse:
    """`code`: ours (a word), or a vendor's where it is the better answer (Twilio's error numbers)."""
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


async def missing_setting(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MissingSetting)
    return error_response(500, "missing_setting", str(exc))
