"""What `phonebot serve` tells the person who started it: where it listens, where to call the bot
from a browser, what to paste into Twilio, where its data is, and what is still missing. Plain
words on a terminal; the same facts as log events otherwise (a plain paragraph would break a JSON
log stream)."""

from __future__ import annotations

import sys

from phonebot import logs
from phonebot.settings import Settings
from phonebot.store import status

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
EVERY_INTERFACE = ("0.0.0.0", "::", "")


def public_urls(settings: Settings) -> list[tuple[str, str, str]]:
    """(key, what, URL) for each address Twilio and people need, once PHONEBOT_PUBLIC_URL is set."""
    if settings.public_url is None:
        return []
    base = settings.public_url
    return [
        ("voice_webhook", "A call comes in (Webhook, HTTP POST)", f"{base}/twilio/voice"),
        ("status_callback", "Call status changes (HTTP POST)", f"{base}/twilio/status"),
    ]


def softphone_urls(settings: Settings, host: str, port: int) -> list[str]:
    """Where the softphone page is: on this machine (browsers give the microphone to http pages of
    127.0.0.1 and localhost only), and under PHONEBOT_PUBLIC_URL from anywhere."""
    local = listening_url("127.0.0.1" if host in EVERY_INTERFACE else host, port) + "/phone"
    return [local] + ([f"{settings.public_url}/phone"] if settings.public_url else [])


def listening_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def lines(settings: Settings, host: str, port: int) -> list[str]:
    if host in LOCAL_HOSTS:
        reach = "this machine only; a container needs --host 0.0.0.0"
    else:
        reach = "every interface" if host in EVERY_INTERFACE else "this address only"
    out = [
        f"phonebot is listening on {listening_url(host, port)} ({reach}).",
        "  " + _softphone(settings, softphone_urls(settings, host, port)),
        f"  Database: {status.where(settings.database_url)}",
    ]
    urls = public_urls(settings)
    if urls:
        width = max(len(what) for _, what, _ in urls)
        out.append("  In the Twilio console, on your number:")
        out += [f"    {what:<{width}}  {url}" for _, what, url in urls]
        out.append("  (`phonebot setup-number` sets them for you.)")
    else:
        out.append("  Set PHONEBOT_PUBLIC_URL (your tunnel's or server's https URL) to see what to paste into Twilio.")
    problems = settings.problems()
    if problems:
        out.append("")
        out.append("Not ready for calls yet:" if settings.call_problems() else "Worth a look:")
        out += [f"  - {problem}" for problem in problems]
        out.append("To fix: `cp .env.example .env`, fill it in, check it with `phonebot doctor`, and start again.")
    return out


def _softphone(settings: Settings, urls: list[str]) -> str:
    where = urls[0] if len(urls) == 1 else f"{urls[0]} on this machine, {urls[1]} from anywhere"
    key = "it asks for PHONEBOT_API_KEY" if settings.api_key else "set PHONEBOT_API_KEY first: it asks for it"
    return f"Call the bot from a browser: {where} ({key})."


def show(settings: Settings, host: str, port: int, log_format: str) -> None:
    """Print the banner on a console, or log the same facts as events."""
    if log_format == "console":
        print("\n".join(lines(settings, host, port)), file=sys.stderr, flush=True)
        return
    log = logs.get_logger("phonebot")
    urls = {key: url for key, _, url in public_urls(settings)}
    log.info(
        "serve.listening",
        url=listening_url(host, port),
        softphone=softphone_urls(settings, host, port)[-1],
        database=status.where(settings.database_url),
        **urls,
    )
    for problem in settings.problems():
        log.warning("settings.problem", variable=problem.variable, problem=problem.message, not_ready=problem.not_ready)
