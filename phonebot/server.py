"""uvicorn, with SIGTERM and SIGINT owned by phonebot so that calls drain before the server stops.

uvicorn's own handling of those signals stops the server at once: its shutdown closes every
WebSocket (close code 1012), which would hang up every call. `DrainingServer` never lets
uvicorn see them: they start the app's drain (`drain.py`), and the server shuts down (closing
connections, then the app's lifespan) only once the drain has finished and no call is left.
One server per process: with several worker processes, each runs one and drains its own calls.
Once it listens, it says where (`on_listening`: the `serve` banner).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn

from phonebot.drain import Drain

SIGNALS = (signal.SIGTERM, signal.SIGINT)
Listening = Callable[[str, int], None]  # (host, port) actually bound: the port may have been 0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain, on_listening: Listening | None = None) -> None:
        super().__init__(config)
        self._drain = drain
        self._on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_listening is not None:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self._on_listening(host, port)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's hook for its signal handlers (around `serve()`): the drain's instead."""
        loop = asyncio.get_running_loop()
        for signum in SIGNALS:
            loop.add_signal_handler(signum, self._drain.begin, signum)
        try:
            yield
        finally:
            for signum in SIGNALS:
                loop.remove_signal_handler(signum)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's main loop asks this every 0.1 s whether to shut down."""
        return await super().on_tick(counter) or self._drain.finished.is_set()
