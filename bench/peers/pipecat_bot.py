"""A Pipecat Twilio + Gemini Live phone bot, as Pipecat's own starter builds one, for the load bench.

    bash bench/peers/pipecat.sh bench --calls 10     # installs Pipecat in its own venv, runs this

It runs in Pipecat's venv, never in phonebot's. What it is, and how it differs from Pipecat's
Gemini Live phone-bot starter (pipecat-examples, gemini-live-starters/phone-bot/bot.py):
- the same pieces: Pipecat's Twilio webhook answer (`POST /` -> TwiML `<Connect><Stream
  url="wss://HOST/ws">`, as `pipecat.runner.run` serves it), `FastAPIWebsocketTransport` with
  `TwilioFrameSerializer`, `GeminiLiveLLMService`, an `LLMContext` with a user message that asks
  for the greeting and `LLMRunFrame` on connect (Pipecat sends it as a `client_content` turn),
  run by Pipecat 1.x's `PipelineWorker` and `WorkerRunner`; phonebot's default model (`--model`:
  pipecat.sh reads it from phonebot's settings; Pipecat's own default is the same today) and
  voice; pipeline rates left at Pipecat's defaults (16 kHz in, 24 kHz out, as that starter has
  them: the Twilio serializer resamples both ways; `--rates 8000,8000`, as Pipecat's cascade
  Twilio starters set them, moves the resampling of the bot's audio into the output transport
  and sends the model 8 kHz);
- left out, each of which would cost Pipecat CPU the bench does not ask phonebot to spend:
  Silero VAD (Gemini's own VAD decides turns, as in phonebot), Krisp, RTVI (the starter says to
  drop it for phone calls; the worker adds it unless told not to), metrics, tools, and logs below
  WARNING; Twilio auto hang-up is off (the bench hangs up, there is no REST API to call).

Uvicorn with uvloop and httptools (uvicorn[standard], as phonebot serves), one process.
"""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from loguru import logger
from pipecat.frames.frames import LLMRunFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.services.google.gemini_live.llm import GeminiLiveLLMService
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner

INSTRUCTIONS = "You are the receptionist of a small business. Keep answers short."
GREETING = "The call has connected. Greet the caller now."

app = FastAPI()


@app.post("/")
async def twiml(request: Request) -> Response:
    """Pipecat runner's Twilio answer: connect the call to this server's /ws."""
    host = request.headers.get("host", "localhost")
    xml = f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Connect><Stream url="wss://{host}/ws"></Stream>'
    return Response(xml + "</Connect></Response>", media_type="application/xml")


@app.websocket("/ws")
async def media(websocket: WebSocket) -> None:
    await websocket.accept()
    _, call = await parse_telephony_websocket(websocket)
    serializer = TwilioFrameSerializer(
        stream_sid=call["stream_id"], call_sid=call["call_id"],
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    transport = FastAPIWebsocketTransport(websocket, FastAPIWebsocketParams(
        audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer))
    llm = GeminiLiveLLMService(
        api_key=os.environ["GOOGLE_API_KEY"],
        settings=GeminiLiveLLMService.Settings(model=app.state.model, voice="Charon", system_instruction=INSTRUCTIONS),
    )
    context = LLMContext([{"role": "user", "content": GREETING}])
    user, assistant = LLMContextAggregatorPair(context)
    pipeline = Pipeline([transport.input(), user, llm, transport.output(), assistant])
    rate_in, rate_out = app.state.rates
    params = PipelineParams(audio_in_sample_rate=rate_in, audio_out_sample_rate=rate_out)
    worker = PipelineWorker(pipeline, params=params, enable_rtvi=False)

    @transport.event_handler("on_client_connected")
    async def on_connected(_transport: object, _client: object) -> None:
        await worker.queue_frames([LLMRunFrame()])

    @transport.event_handler("on_client_disconnected")
    async def on_disconnected(_transport: object, _client: object) -> None:
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--rates", default="16000,24000", help="pipeline sample rates in,out (Pipecat's defaults)")
    parser.add_argument("--model", default="gemini-3.8-live", help="the Gemini Live model (phonebot's default)")
    args = parser.parse_args()
    app.state.rates = tuple(int(rate) for rate in args.rates.split(","))
    app.state.model = args.model
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws_ping_interval=None)


if __name__ == "__main__":
    main()
