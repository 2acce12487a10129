"""uvicorn, with SIGTERM and SIGINT owned by phonebot so that calls drain before the server stops.

uvicorn's own handling of those signals stops the server at once: its shutdown closes every
WebSocket (close code 1012), which would hang up every call. `DrainingServer` never lets
uvicorn see them: they start the app's drain (`drain.py`), and the server shuts down (closing
connections, then the app's lifespan) only once the drain has finished and no call is left.
Once it listens, it says where (`on_listening`: the `serve` banner).
One server per process: with several worker processes (`workers.py`), each runs one and drains its
own calls, listens on a socket of its own, takes the streams its siblings hand over, and is told
by the parent when to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import structlog
import uvicorn

from phonebot.drain import Drain

if TYPE_CHECKING:
    from phonebot.workers import Worker

log = structlog.get_logger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
Listening = Callable[[str, int], None]  # (host, port) actually bound: the port may have been 0


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, drain: Drain, on_listening: Listening | None = None, worker: Worker | None = None
    ) -> None:
        super().__init__(config)
        self._drain = drain
        self._on_listening = on_listening
        self._worker = worker
        self._adopting: set[asyncio.Task[object]] = set()

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None and self._worker is not None:
            sockets = [self._worker.socket()]
        super().run(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_listening is not None:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self._on_listening(host, port)
        if self.started and self._worker is not None:
            self._worker.siblings.start(self._adopt)
            self._worker.listen_to_parent(self._drain.requested)
            self._worker.ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._worker is not None:  # from now on siblings serve the streams they get themselves
            self._worker.siblings.close()
        await super().shutdown(sockets)

    def _adopt(self, sock: socket.socket, head: bytes) -> None:
        """A connection a sibling worker handed over: served as if accepted here (uvicorn's own
        protocol factory), its request head read again."""
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            made = self.config.http_protocol_class(  # type: ignore[call-arg]
                config=self.config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop
            )
            made.handed_head = head  # type: ignore[attr-defined]
            return made

        async def adopt() -> None:
            try:
                await loop.connect_accepted_socket(protocol, sock)
                log.info("siblings.adopted")
            except OSError as error:
                log.warning("siblings.adopt_failed", error=repr(error))
                sock.close()

        task = loop.create_task(adopt())
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's hook for its signal handlers (around `serve()`): the drain's instead. A worker
        leaves them to its parent, which tells it (a terminal or a service manager signals every
        process of the group: one Ctrl-C must not count as two)."""
        loop = asyncio.get_running_loop()
        for signum in SIGNALS:
            if self._worker is None:
                loop.add_signal_handler(signum, self._drain.begin, signum)
            else:
                loop.add_signal_handler(signum, _left_to_parent, signum)
        try:
            yield
        finally:
            for signum in SIGNALS:
                loop.remove_signal_handler(signum)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's main loop asks this every 0.1 s whether to shut down."""
        return await super().on_tick(counter) or self._drain.finished.is_set()


def _left_to_parent(signum: int) -> None:
    log.debug("worker.signal_left_to_parent", signal=signal.Signals(signum).name, parent=os.getppid())
