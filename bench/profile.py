"""Where the service's CPU goes under load: py-spy, and a summary of what it sampled.

`record()` runs `py-spy record --nonblocking` against the service for the measured window and
writes collapsed stacks (py-spy's "raw" format). `summarize()` keeps them (for a flame graph) and turns them into
shares of the sampled CPU time: per function (self and inclusive) and per package of the innermost frame.
Samples where the service was idle (waiting in epoll) are not taken, so shares are of busy time.
Time in C code (json, numpy, ssl) counts towards the Python function that called it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*?)(?::\d+)?\)$")
_PACKAGES = ("google/genai", "pydantic", "pydantic_core", "websockets", "uvicorn", "starlette", "structlog",
             "phonebot", "numpy", "asyncio", "uvloop", "json", "ssl", "base64", "typing", "enum", "httptools")


# Where a sample's time goes: the bucket of the innermost frame that has a marker (so numpy
# inside the upsampler counts as codec, the upsampler inside a pump too). Markers match
# "function (file)". py-spy often sees only the inner part of a coroutine's stack (and, not
# pausing the process, now and then a torn one), so each path has markers near the leaves.
_BUCKETS = (
    ("codec: mu-law 8k -> PCM 16k", ("Upsampler8to16.process", "mulaw_to_pcm")),
    ("codec: PCM 24k -> mu-law 8k", ("Downsampler24to8.process", "pcm_to_mulaw")),
    ("Twilio in: WebSocket receive, JSON, base64", (
        "_next_message", "MediaStream.events", "telephony/messages.py", "WebSocket.receive", "asgi_receive",
        "asyncio/queues.py", "asyncio/timeouts.py")),
    ("Twilio out: media/mark/clear sends", (
        "MediaStream.", "WebSocket.send", "asgi_send", "WebSocketsSansIOProtocol.send")),
    ("to the model: audio messages, websockets, TLS", (
        "LiveSession.send_audio", "send_realtime_input", "gemini/wire.py) audio", "Connection.send", "SSLObject.write",
        "randbytes")),
    ("from the model: TLS, websockets, JSON", (
        "LiveSession.events", "AsyncSession._receive", "gemini/wire.py", "Connection.recv", "Assembler.",
        "Connection.data_received", "SSLObject.read")),
    ("resumption bookkeeping (outbox, checkpoints)", ("ResilientModel.",)),
    ("call session logic", ("CallSession.", "Playback.")),
    ("Twilio in: uvicorn's WebSocket protocol", ("WebSocketsSansIOProtocol.",)),
    (
        "WebSocket frame parsing (either link)",
        ("websockets/protocol.py", "websockets/frames.py", "websockets/streams.py"),
    ),
)


def _bucket(frames: list[str]) -> str:
    for frame in reversed(frames):
        for label, markers in _BUCKETS:
            if any(marker in frame for marker in markers):
                return label
    if frames[-1].startswith("Runner.run "):
        return "event loop: uvloop's C code (epoll, socket reads and writes, callbacks)"
    return "other"


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).is_file() else None


async def record(pid: int, seconds: float, out: Path, rate: int = 200) -> asyncio.subprocess.Process | None:
    """Start py-spy on pid for `seconds`; None if py-spy is not installed. Await `.wait()` on the result."""
    exe = py_spy()
    if exe is None:
        return None
    return await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
        "--nonblocking", "--subprocesses", "--format", "raw", "-o", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            return file.split("/", 1)[1] if marker == "/lib/python3" else file
    return file


def _package(file: str) -> str:
    for package in _PACKAGES:
        if file.startswith((package + "/", package + ".")) or f"/{package}/" in file:
            return package.replace("/", ".")
    return file.split("/", 1)[0]


def summarize(collapsed: Path, top: int = 15) -> dict:
    """Shares (% of sampled busy time): by what the service was doing, by function (self and
    inclusive), and by package of the innermost frame."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for raw in stack.split(";"):
            match = _FRAME.match(raw)
            if match:
                frames.append((match["name"], _short(match["file"])))
        if not frames:
            continue
        total += count
        name, file = frames[-1]
        own[f"{name} ({file})"] += count
        packages[_package(file)] += count
        buckets[_bucket([f"{n} ({f})" for n, f in frames])] += count
        for function in {f"{n} ({f})" for n, f in frames}:
            inclusive[function] += count

    def shares(counter: Counter[str], limit: int) -> list[list]:
        return [[key, round(100 * n / total, 1)] for key, n in counter.most_common(limit)] if total else []

    return {
        "samples": total,
        "where_pct": shares(buckets, len(_BUCKETS) + 3),
        "self_pct": shares(own, top),
        "inclusive_pct": shares(inclusive, top * 3),
        "package_self_pct": shares(packages, top),
        # The samples themselves, for a flame graph: `flamegraph.pl`, speedscope.app, ...
        "collapsed": collapsed.read_text().splitlines(),
    }
