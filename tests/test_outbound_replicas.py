"""Outbound calls across processes that share one database (a SQLite file), as several replicas do.

The API request reaches one `phonebot serve`, Twilio's media stream another: that one finds the
call's instructions and metadata in the database. Twilio's answering-machine verdict reaches the
first: the second, which runs the call, finds it in the database and leaves the message. And
`phonebot call` places a call from a terminal through the same code path, and a replica takes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from phonebot.call.voicemail import VOICEMAIL_CUE
from tests import audio
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, make_settings
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.webhook_receiver import SECRET, WebhookReceiver
from tests.phone import API_KEY, BUSINESS, CALLEE, FORM, expected_mulaw_bytes, line, pick_up, place, post_amd
from tests.served import ACCOUNT_SID, Served, serve

INSTRUCTIONS = "You are calling Ada Lovelace about her haircut tomorrow at 10:00. Offer to move it."
METADATA = {"customer_id": "cus_8812", "campaign": "reminders"}
MESSAGE = "Hi, this is Bella's salon about your appointment tomorrow. Please call us back. Goodbye!"


def environment(tmp_path: Path, twilio_rest: FakeTwilioRest, **extra: str) -> dict[str, str]:
    """What every process is configured with: one database, one Twilio account, one API key."""
    twilio_rest.caller_ids.add(BUSINESS)
    return {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/shared.db",
        "PHONEBOT_API_KEY": API_KEY,
        "TWILIO_PHONE_NUMBER": BUSINESS,
        "TWILIO_API_BASE_URL": twilio_rest.base_url,
        "PHONEBOT_VOICEMAIL_MESSAGE": MESSAGE,
        **extra,
    }


def operator(served: Served) -> Served:
    """The process, as the operator's API client sees it (with the API key)."""
    served.settings = make_settings(api_key=API_KEY)
    return served


async def test_placed_on_one_replica_streamed_and_its_machine_answered_on_another(
    tmp_path: Path, gemini: FakeLiveServer, twilio_rest: FakeTwilioRest, webhook_receiver: WebhookReceiver
) -> None:
    env = environment(
        tmp_path, twilio_rest, TRANSCRIPT_WEBHOOK_URL=webhook_receiver.url, TRANSCRIPT_WEBHOOK_SECRET=SECRET
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with serve(tmp_path / "a", **env) as a, serve(tmp_path / "b", **env) as b:
        response = await place(operator(a), to=CALLEE, instructions=INSTRUCTIONS, metadata=METADATA)
        assert response.status_code == 201, response.text
        [created] = twilio_rest.created
        ringing = await gemini.next_session()  # A opens a session while the phone rings ...
        assert INSTRUCTIONS in ringing.system_instruction_text

        call = pick_up(b, created)  # ... but Twilio's stream reaches B
        await call.connect()
        session = await gemini.next_session()
        assert INSTRUCTIONS in session.system_instruction_text  # from the database
        await session.wait_for_text("Greet")
        greeting = audio.tone(440, 24000, 0.4)
        await session.send_audio(greeting)
        await session.send_turn_complete()
        await call.wait_for_audio(expected_mulaw_bytes(greeting))
        streaming = asyncio.create_task(line(call))

        # The verdict reaches A; B, which runs the call, acts on it.
        assert (await post_amd(a, created.sid, "machine_end_beep")).status_code == 204
        await session.wait_for_text(VOICEMAIL_CUE, timeout=3)
        assert MESSAGE in session.system_instruction_text and INSTRUCTIONS in session.system_instruction_text
        message = audio.tone(523, 24000, 0.8)
        await session.send_output_transcription(MESSAGE)
        await session.send_audio(message)
        await session.send_turn_complete()
        await asyncio.wait_for(call.closed.wait(), 5)
        assert len(call.received_audio) == expected_mulaw_bytes(greeting) + expected_mulaw_bytes(message)
        await streaming

        # Twilio's word that the call is over reaches A: its session from the ringing goes too.
        form = {**FORM, "CallSid": created.sid, "From": BUSINESS, "To": CALLEE, "Direction": "outbound-api"}
        assert (await a.post_status({**form, "CallStatus": "completed", "CallDuration": "9"})).status_code == 204
        await asyncio.wait_for(ringing.closed.wait(), 3)
        [delivered] = await webhook_receiver.wait_for(1)
        data = delivered.json()["data"]
        reported = (data["call_sid"], data["direction"], data["from"], data["to"])
        assert reported == (created.sid, "outbound", BUSINESS, CALLEE)
        assert (data["answered_by"], data["end_reason"], data["metadata"]) == ("machine", "voicemail_left", METADATA)
        assert [turn["text"] for turn in data["turns"]] == [MESSAGE]
        await asyncio.sleep(0.5)
        assert len(webhook_receiver.received) == 1  # once, whichever replica sent it


async def run_cli(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    environ = {
        **os.environ, "PHONEBOT_PUBLIC_URL": PUBLIC_URL, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN, **env,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "phonebot", "call", *args, env=environ, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_phonebot_call_places_a_call_from_a_terminal_that_a_replica_takes(
    tmp_path: Path, gemini: FakeLiveServer, twilio_rest: FakeTwilioRest
) -> None:
    env = environment(tmp_path, twilio_rest)
    (tmp_path / "a").mkdir()
    async with serve(tmp_path / "a", **env) as a:
        status, out, err = await run_cli(
            tmp_path, env, CALLEE, "--instructions", INSTRUCTIONS, "--metadata", json.dumps(METADATA)
        )
        assert status == 0, err
        [created] = twilio_rest.created
        assert out == created.sid + "\n"  # the call SID, alone
        assert (created.field("To"), created.field("From")) == (CALLEE, BUSINESS)
        assert created.field("MachineDetection") == "DetectMessageEnd" and created.field("AsyncAmd") == "true"
        assert created.field("StatusCallback") == f"{PUBLIC_URL}/twilio/status"

        call = pick_up(a, created)
        await call.connect()
        session = await gemini.next_session()  # opened by the replica when the stream came
        assert INSTRUCTIONS in session.system_instruction_text
        await session.wait_for_text("Greet")
        record = await operator(a).call_record(created.sid)
        assert (record["direction"], record["metadata"], record["instructions"]) == ("outbound", METADATA, INSTRUCTIONS)
        await call.stop()

        # What it cannot place, it says, with the status telling the operator's mistakes from the rest.
        twilio_rest.invalid_numbers.add("+15005550001")
        status, out, err = await run_cli(tmp_path, env, "+15005550001")
        assert (status, out) == (2, "") and "Invalid 'To' Phone Number: +15005550001 (21211)" in err
        status, out, err = await run_cli(tmp_path, env, "0800 123")
        assert (status, out) == (2, "") and "E.164" in err
        assert len(twilio_rest.created) == 1
