"""Fixtures for the call tests: a fake of Twilio's REST API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import AUTH_TOKEN
from tests.fakes.twilio_rest import FakeTwilioRest


@pytest.fixture
async def twilio_rest() -> AsyncIterator[FakeTwilioRest]:
    async with FakeTwilioRest("AC" + "0" * 32, AUTH_TOKEN).running() as rest:
        yield rest
