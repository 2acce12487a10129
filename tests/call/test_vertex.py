"""Vertex AI through google-genai's own variables: no API key, Application Default Credentials from
a service-account file whose token endpoint is a local fake, the Vertex AI path and resource names
on the fake Live server, and transparent resumption (the service says which of our messages a
handle covers, and the outbox is trimmed exactly there).

What the SDK does not let a local endpoint stand in for: with only the environment's variables,
a GOOGLE_VERTEX_BASE_URL outside *.googleapis.com is taken for an API gateway (no credentials, no
project in the path). So the call test gives the SDK's client the project and location as
arguments, which is what the SDK does itself against the real regional endpoint; that the
environment alone reaches `https://{location}-aiplatform.googleapis.com` is the SDK's code, not
exercised here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import types

from phonebot.app import tool_specs
from phonebot.gemini.live import KEEPALIVE, GeminiLive
from phonebot.settings import Settings
from tests.call.test_reconnect import PCM16K_PER_FRAME, CallerStream, covered_message, model_of, start
from tests.conftest import make_settings, running
from tests.fakes.gemini_live import FakeLiveServer
from tests.fakes.google_token import TokenServer

PROJECT, LOCATION = "phonebot-test", "us-central1"


@pytest.fixture
def vertex_env(gemini: FakeLiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenServer]:
    with TokenServer() as tokens:
        gemini.vertex_tokens = tokens.issued  # what the token endpoint issues, the Live server takes
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tokens.service_account_file(tmp_path, PROJECT)))
        monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
        monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", LOCATION)
        monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield tokens


def test_vertex_ai_needs_no_key_and_the_sdk_goes_there(
    vertex_env: TokenServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (The SDK picks GOOGLE_GEMINI_BASE_URL before it reads GOOGLE_GENAI_USE_VERTEXAI, and would
    # take the fake's URL for a Vertex gateway: a deployment sets one base URL or the other.)
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL")
    settings = Settings()
    assert settings.vertex_ai and settings.google_api_key is None
    assert not [problem for problem in settings.problems() if problem.variable == "GOOGLE_API_KEY"]
    client = GeminiLive(settings).client()  # no MissingSetting: Application Default Credentials instead
    assert client.vertexai
    assert (client._api_client.project, client._api_client.location) == (PROJECT, LOCATION)


async def test_a_call_over_vertex_ai_resumes_transparently(
    vertex_env: TokenServer, gemini: FakeLiveServer, wait_until: Any
) -> None:
    settings = make_settings(google_api_key=None)
    assert settings.vertex_ai
    client = genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        http_options=types.HttpOptions(base_url=gemini.base_url, async_client_args=KEEPALIVE),
    )
    connector = GeminiLive(settings, tool_specs(settings), None, client=client)
    async with running(settings, connector=connector) as service:
        stream = CallerStream()
        call, first = await start(service, gemini, stream, wait_until)  # message 1: greeting cue; then frames 0..49
        # Application Default Credentials: a token from the service account's token endpoint.
        assert first.vertex and first.headers["authorization"] == "Bearer ya29.fake-1"
        assert vertex_env.grants[0]["scope"] == "https://www.googleapis.com/auth/cloud-platform"
        assert first.model == f"projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/gemini-3.8-live"
        assert first.setup["sessionResumption"] == {"transparent": True}

        covered, covered_bytes = covered_message(first)  # the handle's state holds messages 1..covered
        gemini.issued_handles.add("h1")
        update = {"newHandle": "h1", "resumable": True, "lastConsumedClientMessageIndex": str(covered)}
        await first.send({"sessionResumptionUpdate": update})
        await wait_until(lambda: model_of(service).handle == "h1")
        await first.send_go_away("10s")
        second = await gemini.next_session()
        assert second.setup["sessionResumption"] == {"handle": "h1", "transparent": True}
        assert second.headers["authorization"] == "Bearer ya29.fake-1"  # still valid: not fetched again
        await stream.send(call, 10)
        await second.wait_for_audio(stream.sent * PCM16K_PER_FRAME - covered_bytes)
        await asyncio.sleep(0.05)
        # What the state did not hold yet, and only that:
        assert bytes(second.audio) == stream.pcm16k[covered_bytes : stream.sent * PCM16K_PER_FRAME]
        assert not second.texts  # the greeting cue was
        await call.stop()
