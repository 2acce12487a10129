"""`phonebot serve | doctor | setup-number | call | db upgrade`: thin commands over settings, the app and
the store. Every failure a person can cause is one plain line and an exit status, never a traceback."""

from __future__ import annotations

import argparse
import gc
import sys
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from pydantic import ValidationError

from phonebot import banner, logs
from phonebot.settings import E164, MissingSetting, Settings, invalid_problems

GC_YOUNG_THRESHOLD = 20_000
# Where `serve` listens unless told: this machine only. A tunnel or a reverse proxy on the same
# machine reaches it there, and nothing else on a laptop's network can; a container passes
# `--host 0.0.0.0` (the image does).
DEFAULT_HOST = "127.0.0.1"

if TYPE_CHECKING:
    from phonebot.workers import Worker


def _settings() -> Settings:
    try:
        return Settings.load()
    except ValidationError as error:
        print("phonebot: invalid settings:", file=sys.stderr)
        for problem in invalid_problems(error):
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def serve(args: argparse.Namespace) -> int:
    from phonebot import workers

    count = workers.available_cores() if args.workers is None else args.workers
    if count == 1:
        return serve_process(args.host, args.port)
    settings = _settings()  # checked once here: a worker would fail the same way
    log_format = logs.configure(settings.log_level, settings.log_format, secrets=settings.secret_values())
    try:
        supervisor = workers.Supervisor(count, args.host, args.port)
    except OSError as error:
        print(f"phonebot serve: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    return supervisor.run(lambda host, port: banner.show(settings, host, port, log_format))


def serve_process(host: str, port: int, worker: Worker | None = None) -> int:
    """One process serving calls: the whole service, or one of its workers (`worker`)."""
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from phonebot.app import build_app
    from phonebot.server import DrainingServer
    from phonebot.serving import uvicorn_options
    from phonebot.siblings import handing_protocol

    settings = _settings()
    log_format = logs.configure(settings.log_level, settings.log_format, secrets=settings.secret_values())
    if worker is not None:  # every line says which worker wrote it
        structlog.contextvars.bind_contextvars(worker=worker.index)
    app = build_app(settings, worker=worker)
    # Audio frames make many short-lived objects and no cycles: collect the young generation
    # far less often, and keep the long-lived startup objects out of every collection, so the
    # collector's pauses stay out of the calls' latency.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
    options = uvicorn_options(settings)
    if worker is not None:  # a stream for another worker's call goes to that worker
        options["http"] = handing_protocol(options.get("http", HttpToolsProtocol), worker.siblings)
    config = uvicorn.Config(app, host=host, port=port, **options)
    # SIGTERM/SIGINT drain the calls first (server.py); the process exits 0 once they have ended.
    # A worker leaves the banner to its parent, which shows it once they all serve.
    listening = None if worker else lambda host, port: banner.show(settings, host, port, log_format)
    DrainingServer(config, app.state.drain, listening, worker).run()
    return 0


def doctor(args: argparse.Namespace) -> int:
    from phonebot import doctor

    if args.env_file is not None and not Path(args.env_file).is_file():
        print(f"phonebot doctor: {args.env_file} is not a file", file=sys.stderr)
        return 2
    lines, status = doctor.run(args.env_file or ".env", online=args.online)
    print("\n".join(lines))
    return status


def setup_number(args: argparse.Namespace) -> int:
    from phonebot.telephony import account
    from phonebot.telephony.rest import TwilioRest

    settings = _settings()
    number = args.number or settings.twilio_phone_number
    if number is None or not E164.fullmatch(number):
        print("phonebot setup-number: which number? Give it (+14155550123) or set TWILIO_PHONE_NUMBER", file=sys.stderr)
        return 2
    needed = ("PHONEBOT_PUBLIC_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")
    blocking = [problem for problem in settings.problems() if problem.variable in needed and problem.not_ready]
    if blocking:
        print("phonebot setup-number: fix these first (`phonebot doctor` checks them):", file=sys.stderr)
        for problem in blocking:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    urls = {key: url for key, _, url in banner.public_urls(settings)}
    rest = TwilioRest(settings, timeout_s=account.REQUEST_TIMEOUT_S)
    try:
        sid, changes = account.point_number(rest, number, urls["voice_webhook"], urls["status_callback"])
    except account.AccountError as error:
        print(f"phonebot setup-number: {error}", file=sys.stderr)
        return 1
    if not changes:
        print(f"phonebot setup-number: {number} ({sid}) already points at {settings.public_url}; nothing changed")
        return 0
    print(f"phonebot setup-number: {number} ({sid}) now points at {settings.public_url}:")
    for change in changes:
        print(f"  {change.setting}: {change.before or '(none)'} -> {change.after or '(none)'}")
    return 0


def call(args: argparse.Namespace) -> int:
    """Place an outbound call through the very function `POST /calls` runs (phonebot/outbound.py)."""
    import asyncio
    import json

    from sqlalchemy.exc import SQLAlchemyError

    from phonebot.outbound import CallOrder, NotPlaced, Outbound
    from phonebot.store import CallStore
    from phonebot.store.engine import make_engine
    from phonebot.telephony.rest import TwilioRest

    settings = _settings()
    logs.configure("warning", "console")  # the call SID alone on stdout; warnings on stderr
    try:
        metadata = json.loads(args.metadata) if args.metadata is not None else None
    except ValueError as error:
        print(f"phonebot call: --metadata is not JSON: {error}", file=sys.stderr)
        return 2

    async def run() -> str:
        engine, rest = make_engine(settings.database_url), TwilioRest(settings)
        try:
            order = CallOrder.parse({"to": args.to, "instructions": args.instructions, "metadata": metadata})
            # No calls of its own: this process ends before the callee answers. The replica that
            # takes the stream opens the model session then.
            placed = await Outbound(settings, CallStore(engine), rest, calls=None).place(order)
            return placed.call_sid
        finally:
            await rest.aclose()
            await engine.dispose()

    try:
        print(asyncio.run(run()))
    except NotPlaced as failure:
        print(f"phonebot call: not placed: {failure.message} ({failure.code})", file=sys.stderr)
        return 2 if failure.status < 500 else 1
    except (SQLAlchemyError, OSError) as error:
        print(f"phonebot call: the database cannot be used ({type(error).__name__}); `phonebot doctor` checks it",
              file=sys.stderr)
        return 1
    except MissingSetting as error:
        print(f"phonebot call: {error}", file=sys.stderr)
        return 2
    return 0


def db_upgrade(_args: argparse.Namespace) -> int:
    import asyncio

    from phonebot.store import migrate, status
    from phonebot.store.engine import make_engine

    settings = _settings()
    where = status.where(settings.database_url)

    async def run() -> str | None:
        engine = make_engine(settings.database_url, timeout_s=None)  # migrations may take long
        try:
            return await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    try:
        revision = asyncio.run(run())
    except (OSError, TimeoutError) as error:
        print(f"phonebot db upgrade: cannot reach {where}: {status.describe(error)}", file=sys.stderr)
        return 1
    except status.UNREACHABLE as error:
        print(f"phonebot db upgrade: {where}: {status.describe(error)}", file=sys.stderr)
        return 1
    print(f"phonebot db upgrade: {where} is at schema revision {revision}")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phonebot", description="Phone calls answered by Gemini Live.")
    parser.add_argument("--version", action="version", version=f"phonebot {version('phonebot')}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="run the service")
    serve_cmd.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    serve_cmd.add_argument("--port", type=int, default=8000)
    serve_cmd.add_argument(
        "--workers", type=_positive, metavar="N", help="processes serving calls on the port (default: the cores)"
    )
    serve_cmd.set_defaults(func=serve)

    doctor_cmd = commands.add_parser("doctor", help="check the settings and say what is missing or wrong")
    doctor_cmd.add_argument("--env-file", metavar="F", help="read settings from F (default: ./.env if there is one)")
    doctor_cmd.add_argument(
        "--online", action="store_true", help="also try the database, the Twilio credentials and a Gemini session"
    )
    doctor_cmd.set_defaults(func=doctor)

    number_cmd = commands.add_parser(
        "setup-number", help="point a Twilio number's voice webhook and status callback at this service"
    )
    number_cmd.add_argument("number", nargs="?", help="the number, +E.164 (default: TWILIO_PHONE_NUMBER)")
    number_cmd.set_defaults(func=setup_number)

    call_cmd = commands.add_parser("call", help="call a number: the bot talks to whoever answers; prints the call SID")
    call_cmd.add_argument("to", help="the number to call, E.164: +14155550123")
    call_cmd.add_argument("--instructions", help="what the bot is to do on this call, added to its instructions")
    call_cmd.add_argument("--metadata", help="a JSON object kept with the call record and sent with its webhook")
    call_cmd.set_defaults(func=call)

    db_cmd = commands.add_parser("db", help="the database")
    db_commands = db_cmd.add_subparsers(dest="db_command", required=True)
    db_upgrade_cmd = db_commands.add_parser("upgrade", help="apply the migrations to DATABASE_URL")
    db_upgrade_cmd.set_defaults(func=db_upgrade)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
