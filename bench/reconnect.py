"""Switch-over benchmark: how long caller audio stops reaching the model when a Live connection
is replaced, and whether any of it is lost.

    python -m bench.reconnect [--switches 10]

One call runs through the real app (uvicorn on 127.0.0.1) and the real google-genai SDK against
the load bench's fake model (`bench.fake_model`, here silent and driven by this bench); the
caller (`bench.callers`: voice webhook, then the stream) sends unique 20 ms frames in real time.
Each round the fake issues a handle, then either says goAway or drops the socket (close 1011,
or a TCP abort with no close frame). Reported per kind:
- gap: last audio message on the old connection -> first audio message on the new one
  (for a goAway this includes the new connection's TLS + setup, done while the old still flows);
- frames lost: caller frames whose audio never reached the model, comparing the model's input,
  stitched across connections at each handle, with the exact expected 16 kHz stream.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import os
import random
import socket
import statistics
import tempfile
from typing import Any

import uvicorn

from bench.callers import Caller
from bench.fake_model import FakeModel, Script, Session, make_tls
from bench.voice import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, Line
from phonebot import codec, logs
from phonebot.app import build_app
from phonebot.serving import uvicorn_options
from phonebot.settings import Settings

FRAME, PCM_PER_FRAME = 160, 640


async def _serve(settings: Settings) -> tuple[uvicorn.Server, asyncio.Task[None], int, Any]:
    app = build_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **uvicorn_options(settings)))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, sock.getsockname()[1], app


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


def _coverage(audio: bytes, expected: bytes) -> tuple[set[int], int]:
    """Caller frames a connection received (found by content: every frame is unique), and mismatches."""
    if len(audio) < PCM_PER_FRAME:
        return set(), 0
    first = expected.find(audio[:PCM_PER_FRAME]) // PCM_PER_FRAME
    frames, wrong = set(), 0
    for k in range(len(audio) // PCM_PER_FRAME):
        chunk = audio[k * PCM_PER_FRAME : (k + 1) * PCM_PER_FRAME]
        if chunk == expected[(first + k) * PCM_PER_FRAME : (first + k + 1) * PCM_PER_FRAME]:
            frames.add(first + k)
        else:
            wrong += 1
    return frames, wrong


async def _round(kind: str, n: int, session: Session, gemini: FakeModel, model: Any) -> Session:
    handle = f"{kind}-{n}"
    session.send({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})
    await _until(lambda: model.handle == handle)
    await asyncio.sleep(0.2)  # the caller goes on talking past the handle
    if kind == "goAway":
        session.send({"goAway": {"timeLeft": "10s"}})
    elif kind == "close 1011":
        session.close(1011, "Internal error encountered.")
    else:
        session.abort()
    replacement = await gemini.next_session()
    await _until(lambda: replacement.record is not None and replacement.record.audio_in_at)
    await asyncio.sleep(0.2)
    return replacement


def _arrivals(session: Session) -> list[float]:
    assert session.record is not None
    return session.record.audio_in_at


async def run(switches: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    frames = int((switches * 3 * 2.0 + 5) / 0.02)  # more than a slow machine needs: frames must not repeat
    mulaw = rng.randbytes(frames * FRAME)
    payloads = [binascii.b2a_base64(mulaw[k * FRAME : (k + 1) * FRAME], newline=False).decode() for k in range(frames)]
    expected = codec.Upsampler8to16().process(codec.mulaw_to_pcm(mulaw))
    with tempfile.TemporaryDirectory() as tmp:
        server_ctx, ca = make_tls(tmp)
        gemini = FakeModel(server_ctx, Script(talks=False), driven=True)
        await gemini.start()
        os.environ.update(GOOGLE_GEMINI_BASE_URL=gemini.base_url, SSL_CERT_FILE=str(ca), GOOGLE_API_KEY="bench")
        settings = Settings(public_url=PUBLIC_URL, twilio_auth_token=AUTH_TOKEN, twilio_account_sid=ACCOUNT_SID,
                            google_api_key="bench", database_url=f"sqlite+aiosqlite:///{tmp}/phonebot.db")
        server, task, port, app = await _serve(settings)
        call = Caller(0, Line("127.0.0.1", port), payloads=payloads)
        await call.dial()
        session = await gemini.next_session()
        await _until(lambda: _arrivals(session))
        model = next(iter(app.state.calls.active.values())).model
        rows: dict[str, list[float]] = {}
        for n in range(switches):
            for kind in ("goAway", "close 1011", "TCP abort"):
                old = session
                session = await _round(kind, n, session, gemini, model)
                gap = _arrivals(session)[0] - _arrivals(old)[-1]
                rows.setdefault(kind, []).append(max(0.0, gap) * 1000)
        call.stop_media()
        await asyncio.sleep(0.05)
        if len(call.sent_at) >= frames:
            raise RuntimeError(f"the caller ran out of unique frames ({frames}); lost frames cannot be told")
        covered, wrong = set(), 0
        for each in gemini.sessions:
            frames_of, wrong_of = _coverage(each.audio(), expected)
            covered |= frames_of
            wrong += wrong_of
        sent = max(covered) + 1
        lost = sent - len(covered) + wrong
        await call.hang_up()
        server.should_exit = True
        await task
        await gemini.stop()
    return [
        {
            "kind": kind,
            "switches": len(gaps),
            "gap_p50_ms": statistics.median(gaps),
            "gap_max_ms": max(gaps),
            "frames_sent": sent,
            "frames_lost": lost,
            "dropped_by_bound": model.dropped_audio_messages,
        }
        for kind, gaps in rows.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=10, help="rounds of (goAway, close, abort)")
    args = parser.parse_args()
    logs.configure("error", "console")
    rows = asyncio.run(run(args.switches))
    print(f"| {'switch-over':<12} | {'count':>5} | {'gap p50 ms':>10} | {'gap max ms':>10} |")
    print(f"|{'-' * 14}|{'-' * 7}|{'-' * 12}|{'-' * 12}|")
    for row in rows:
        print(f"| {row['kind']:<12} | {row['switches']:>5} | {row['gap_p50_ms']:>10.1f} | {row['gap_max_ms']:>10.1f} |")
    print(f"\ncaller frames sent: {rows[0]['frames_sent']}, lost (never reached any connection, or wrong): "
          f"{rows[0]['frames_lost']}, dropped by the outage bound: {rows[0]['dropped_by_bound']}")


if __name__ == "__main__":
    main()
