"""build_app(settings): the routes, and the one place the telephony side and the model side are wired into calls."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from phonebot import api, errors, metrics, siblings
from phonebot.business import Business, BusinessFileError, load_business
from phonebot.call.calls import Calls
from phonebot.call.handoff import Handoff
from phonebot.call.ports import ModelConnector
from phonebot.call.reconnect import ReconnectPolicy
from phonebot.call.voicemail import Voicemail
from phonebot.drain import Drain
from phonebot.gemini.live import GeminiLive
from phonebot.health import Readiness, healthz
from phonebot.outbound import Outbound
from phonebot.serving import BodyLimit
from phonebot.settings import MissingSetting, Settings
from phonebot.store import CallStore, Desk, StoreNotReady, migrate
from phonebot.store.engine import make_engine
from phonebot.store.liveness import Liveness
from phonebot.store.outbox import Outbox
from phonebot.store.recorder import Recorder
from phonebot.store.records import ENDED
from phonebot.telephony.amd import MachineAnswer, amd_endpoint
from phonebot.telephony.rest import TwilioRest
from phonebot.telephony.status import CallStatus, status_endpoint
from phonebot.telephony.twilio_media import media_endpoint
from phonebot.telephony.voice import voice_endpoint
from phonebot.tools import control
from phonebot.tools.booking import BOOKING_TOOLS
from phonebot.tools.spec import ToolFunction, ToolSpec
from phonebot.web import softphone
from phonebot.web.live import LiveView
from phonebot.webhook import SETTLE_S, Deliveries

if TYPE_CHECKING:
    from phonebot.workers import Worker

log = structlog.get_logger(__name__)

def tool_specs(settings: Settings) -> list[ToolSpec]:
    """The tools the model is given; transfer_call only when there is somewhere to transfer to."""
    functions: list[ToolFunction] = [*BOOKING_TOOLS, control.end_call]
    if settings.transfer_number:
        functions.append(control.transfer_call)
    return [ToolSpec.of(function) for function in functions]


def _business(settings: Settings) -> Business | BusinessFileError:
    try:
        return load_business(settings.business_file)
    except BusinessFileError as error:
        log.error("booking.unavailable", reason=str(error))
        return error


async def _make_ready(engine: AsyncEngine) -> bool:
    """Whether the database is usable. If not, the service still starts (and says why): what needs
    the database fails on its own, and a database fixed meanwhile is used without a restart."""
    try:
        await migrate.make_ready(engine)
    except (StoreNotReady, SQLAlchemyError, OSError) as error:
        log.error("database.unavailable", reason=str(error))
        return False
    return True


def build_app(
    settings: Settings,
    connector: ModelConnector | None = None,
    tools: list[ToolSpec] | None = None,
    worker: Worker | None = None,
) -> Starlette:
    """The service; `worker`: it is one of several worker processes of a replica (`workers.py`)."""
    tools = tool_specs(settings) if tools is None else tools
    loaded = _business(settings)
    business = loaded if isinstance(loaded, Business) else None
    problems = settings.call_problems()  # what readiness reports as long as the process runs
    if business is None:
        problems.append(f"booking desk closed: PHONEBOT_BUSINESS_FILE {loaded}")
    calls = Calls(
        connector or GeminiLive(settings, tools, business),
        tools,
        transfer_to=settings.transfer_number,
        policy=ReconnectPolicy(outage_audio_s=settings.reconnect_buffer_s),
        max_duration_s=settings.max_call_s,
        max_calls=settings.max_calls,
        caller_silence_s=settings.caller_silence_s,
    )
    rest = TwilioRest(settings)
    # One engine for everything the service keeps (calls, stream tokens, bookings, records): one pool.
    engine = make_engine(settings.database_url)
    liveness = Liveness(engine)  # this process, as the calls it runs name it
    tag = siblings.token_tag(worker.index) if worker else ""
    store = CallStore(engine, liveness.instance, token_tag=tag)
    handoff = Handoff(calls, store)  # calls heard of here whose stream another replica took
    if worker is not None:  # one replica, several processes: one cap, and news of calls between them
        calls.admission.tally = worker.tally
        calls.announce = lambda call_sid: worker.siblings.tell(siblings.STREAMING, call_sid)
        worker.siblings.notices = {siblings.STREAMING: calls.elsewhere, siblings.ENDED: calls.ended}
    readiness = Readiness(problems, engine, calls.admission)
    # Call records: written as calls go, finalised if their process died, reported by webhook.
    deliveries = Deliveries(settings, Outbox(engine, liveness.instance), liveness)
    webhook = settings.transcript_webhook_url is not None
    recorder = Recorder(engine, liveness, webhook=webhook, on_queued=deliveries.wake)
    live = LiveView(recorder)  # the store's, plus the softphone page of each web call
    calls.records = live
    # Outbound calls: placed by the API, told apart from answering machines by Twilio's detection,
    # whose verdict any replica may hear: it is kept in the database, where the call's replica looks.
    outbound = Outbound(settings, store, rest, calls)
    calls.voicemail = Voicemail(settings.voicemail, settings.voicemail_message, settings.prompt)
    calls.verdicts = store

    async def call_status(update: CallStatus) -> bool:
        if update.status in ENDED:
            await calls.ended(update.call_sid)  # at once, whatever the database says
            if worker is not None:  # its early session may be in another worker
                worker.siblings.tell(siblings.ENDED, update.call_sid)
        try:
            await recorder.status(update.call_sid, update.status, update.answered_by)
        except SQLAlchemyError as error:
            log.error("records.status_not_recorded", call_sid=update.call_sid, error=repr(error))
            return False
        return True

    async def machine_answer(answer: MachineAnswer) -> bool:
        # Recorded first: the replica running the call may be another (it looks there), and the
        # call's report, written once it ends, says who answered.
        try:
            known: bool | None = await store.set_answered_by(answer.call_sid, answer.answered_by)
        except SQLAlchemyError as error:
            log.error("amd.not_recorded", call_sid=answer.call_sid, error=repr(error))
            known = None
        if known is False:
            log.warning("amd.unknown_call", call_sid=answer.call_sid)
        await calls.answered(answer.call_sid, answer.answered_by)  # at once, if the call runs here
        return known is not None

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await _make_ready(engine)
        # Without a business the service still answers calls, and the booking tools say so.
        calls.bookings = Desk(business, engine) if business is not None else None
        recorder.start()
        deliveries.start()
        handoff.start()
        try:
            yield
        finally:
            await handoff.close()
            await calls.aclose()
            await recorder.close()
            await deliveries.close(settle_s=SETTLE_S)
            await rest.aclose()
            await engine.dispose()

    app = Starlette(
        routes=[
            Route("/twilio/voice", voice_endpoint(settings, store, calls), methods=["POST"]),
            WebSocketRoute("/twilio/media/{token}", media_endpoint(settings, store, calls.run, rest)),
            Route("/twilio/status", status_endpoint(settings, call_status), methods=["POST"]),
            Route("/twilio/amd", amd_endpoint(settings, machine_answer), methods=["POST"]),
            *api.routes(settings, engine, outbound),
            *softphone.routes(settings, store, calls, live),
            Route("/healthz", healthz),
            Route("/readyz", readiness.readyz),
            Route("/metrics", metrics_endpoint),
        ],
        middleware=[Middleware(BodyLimit)],  # every body bounded before any route reads it
        exception_handlers={MissingSetting: errors.missing_setting},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.calls = calls
    app.state.store = store
    app.state.drain = Drain(calls, settings.drain_s)  # SIGTERM starts it (server.py); `.draining` for the API
    app.state.recorder = recorder
    return app


async def metrics_endpoint(request: Request) -> Response:
    body, content_type = metrics.exposition(request.headers.get("accept"))
    return Response(body, headers={"content-type": content_type})
