"""A tiny Twilio Media Streams bot that is not phonebot, for the load bench's smoke test.

    python -m tests.peer_bot --port 8790    # with GOOGLE_GEMINI_BASE_URL, SSL_CERT_FILE, GOOGLE_API_KEY

It has the habits of other bots that `bench.load --target` must measure honestly (Pipecat's):
- no `/healthz` and no voice webhook: Twilio streams straight to `ws://host:port/media`;
- its Gemini Live session (google-genai, configured from its environment) opens when the stream
  starts, with no caller number in its setup, and it asks for the greeting with a
  `client_content` turn;
- caller audio that comes before the session is ready is dropped; the rest goes to the model as
  8 kHz PCM;
- bot audio is played to the caller at real-time pace from a queue that first fills 60 ms, and on
  `interrupted` the queue is emptied and Twilio told to `clear`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import time

from google import genai
from google.genai import types
from websockets.asyncio.server import ServerConnection, serve

from phonebot import codec
from phonebot.settings import DEFAULT_MODEL

CHUNK_S = 0.04  # the model's chunks as they come; paced out one per 40 ms of audio
PREBUFFER_S = 0.06


class Player:
    """The bot's audio to the caller, at real-time pace."""

    def __init__(self, ws: ServerConnection, stream_sid: str) -> None:
        self._ws, self._sid = ws, stream_sid
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._cleared = 0  # clears so far: a chunk waiting for its turn when one came is dropped too
        self._task = asyncio.create_task(self._play())

    def add(self, mulaw: bytes) -> None:
        self._queue.put_nowait(mulaw)

    async def clear(self) -> None:
        self._cleared += 1
        while not self._queue.empty():
            self._queue.get_nowait()
        await self._ws.send(json.dumps({"event": "clear", "streamSid": self._sid}))

    async def _play(self) -> None:
        due = 0.0
        while True:
            mulaw = await self._queue.get()
            now, cleared = time.monotonic(), self._cleared
            if now > due:  # a new run of audio: let the queue fill first
                due = now + PREBUFFER_S
            await asyncio.sleep(due - now)
            if cleared != self._cleared:
                due = 0.0
                continue
            payload = base64.b64encode(mulaw).decode()
            await self._ws.send(json.dumps({"event": "media", "streamSid": self._sid, "media": {"payload": payload}}))
            due += len(mulaw) / 8000

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # the caller may have gone first
            await self._task


async def _model_side(session: genai.live.AsyncSession, player: Player) -> None:
    downsampler = codec.Downsampler24to8()
    while True:  # receive() ends at each turn's end
        async for message in session.receive():
            content = message.server_content
            if content is None:
                continue
            if content.interrupted:
                await player.clear()
            for part in content.model_turn.parts if content.model_turn and content.model_turn.parts else []:
                if part.inline_data and part.inline_data.data:
                    player.add(codec.pcm_to_mulaw(downsampler.process(part.inline_data.data)))


async def call(ws: ServerConnection) -> None:
    session: genai.live.AsyncSession | None = None
    tasks: list[asyncio.Task[None]] = []
    player: Player | None = None
    async with contextlib.AsyncExitStack() as stack:

        async def open_session() -> None:
            nonlocal session
            client = genai.Client(api_key=os.environ["GOOGLE_API_KEY"])
            config = types.LiveConnectConfig(response_modalities=[types.Modality.AUDIO])
            opened = await stack.enter_async_context(client.aio.live.connect(model=DEFAULT_MODEL, config=config))
            await opened.send_client_content(
                turns=[types.Content(role="user", parts=[types.Part(text="Greet the caller.")])], turn_complete=True)
            assert player is not None
            tasks.append(asyncio.create_task(_model_side(opened, player)))
            session = opened  # ready: caller audio goes to the model from now on

        async for raw in ws:
            message = json.loads(raw)
            event = message.get("event")
            if event == "start":
                player = Player(ws, message["start"]["streamSid"])
                tasks.append(asyncio.create_task(open_session()))
            elif event == "media" and session is not None:
                pcm = codec.mulaw_to_pcm(base64.b64decode(message["media"]["payload"]))
                await session.send_realtime_input(audio=types.Blob(data=pcm, mime_type="audio/pcm;rate=8000"))
            elif event == "stop":
                break
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # the model link may have ended first
        if player is not None:
            await player.stop()


async def main(port: int) -> None:
    async def handler(ws: ServerConnection) -> None:
        if ws.request is not None and ws.request.path == "/media":
            await call(ws)

    async with serve(handler, "127.0.0.1", port, ping_interval=None) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
