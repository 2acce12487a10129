"""`phonebot doctor`: every problem with the settings at once, and with `--online`, whether what
they point at answers: the database, Twilio's REST API, a Gemini Live session.

Each online check lives at its border (store/status.py, telephony/account.py, gemini/probe.py)
and answers (holds, what was found) in plain words; this module runs them and reports.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from phonebot.business import BusinessFileError, load_business
from phonebot.gemini import probe
from phonebot.settings import Diagnosis, Settings, diagnose
from phonebot.store import status
from phonebot.telephony import account
from phonebot.telephony.rest import TwilioRest


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    holds: bool
    found: str


def run(env_file: str | os.PathLike[str], online: bool) -> tuple[list[str], int]:
    """The report's lines, and the exit status: 0 only when everything checked holds."""
    diagnosis = diagnose(env_file)
    lines = [_source(env_file)]
    checks = asyncio.run(online_checks(diagnosis.settings)) if online and diagnosis.settings else []
    problems = _unresolved(diagnosis, checks)
    if problems:
        lines.append(f"{len(problems)} problem(s) with the settings:")
        lines += [f"  - {problem}" for problem in problems]
        lines.append("(.env.example says what each setting is and where to find it.)")
    else:
        lines.append("The settings look right.")
    if online and diagnosis.settings is None:
        lines.append("Online checks skipped: fix the invalid values above first.")
    if checks:
        lines.append("Online:")
        lines += [f"  {'ok  ' if check.holds else 'FAIL'}  {check.name}: {check.found}" for check in checks]
    ok = not problems and all(check.holds for check in checks)
    return lines, 0 if ok else 1


def _source(env_file: str | os.PathLike[str]) -> str:
    path = Path(env_file)
    if path.is_file():
        return f"phonebot doctor: settings from {path.resolve()} and the environment (the environment wins)"
    return f"phonebot doctor: no {path} here, so the environment alone (start one with `cp .env.example .env`)"


def _unresolved(diagnosis: Diagnosis, checks: list[Check]) -> list[str]:
    """The problems, less a doubt about the Gemini key's shape once a Live session opened with it."""
    gemini_works = any(check.name == "Gemini" and check.holds for check in checks)
    return [
        problem.message
        for problem in diagnosis.problems
        if not (gemini_works and problem.variable == "GOOGLE_API_KEY" and not problem.not_ready)
    ]


async def online_checks(settings: Settings) -> list[Check]:
    """Each check at once, each bounded in time by its own border module."""
    rest = TwilioRest(settings, timeout_s=account.REQUEST_TIMEOUT_S)
    checks: list[tuple[str, Callable[[], Awaitable[tuple[bool, str]]]]] = [
        ("database", lambda: status.check(settings.database_url)),
        ("Twilio", lambda: _twilio(settings, rest)),
        ("Gemini", lambda: _gemini(settings)),
    ]
    results = await asyncio.gather(*(_guarded(check) for _, check in checks))
    return [Check(name, holds, found) for (name, _), (holds, found) in zip(checks, results, strict=True)]


async def _guarded(check: Callable[[], Awaitable[tuple[bool, str]]]) -> tuple[bool, str]:
    try:
        return await check()
    except Exception as error:  # noqa: BLE001 - doctor reports what broke in one line, never a traceback
        return False, f"{type(error).__name__}: {error}"


async def _twilio(settings: Settings, rest: TwilioRest) -> tuple[bool, str]:
    if settings.twilio_account_sid is None or settings.twilio_auth_token is None:
        return False, "skipped: TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are needed"
    return await asyncio.to_thread(account.check_credentials, rest)


async def _gemini(settings: Settings) -> tuple[bool, str]:
    from phonebot.app import tool_specs  # the same tools a call is given

    try:
        business = load_business(settings.business_file)
    except BusinessFileError:
        business = None  # already named among the settings' problems
    return await probe.open_and_close(settings, tool_specs(settings), business)
