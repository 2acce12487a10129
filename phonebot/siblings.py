"""Between the workers of one replica: a stream's connection handed to the worker its call belongs
to, and news of calls.

Twilio's voice webhook and the media stream it leads to are two connections, and with several
workers behind one port (`workers.py`) the kernel gives each to any of them. The call belongs to
the worker that took its webhook: that one counted it and opened its model session early. So
the stream token in the TwiML's URL ends with that worker's tag (`.w{index}`, part of the token
and checked with it), and a worker that gets a WebSocket upgrade naming another worker passes
the connection itself to its owner, before answering anything: the socket's file descriptor
(SCM_RIGHTS) and the request head it read, over a Unix datagram socket. The owner carries on as
if it had accepted the connection; from then on the kernel gives that socket's bytes to the
owner alone, so nothing is relayed per frame, and the hand-over costs a few tens of
microseconds once per call.

Where handing over is not possible (the owner has exited, or its queue is full) the worker that
has the connection serves it, as a replica whose webhook went to another replica does, and tells
its siblings (`STREAMING`), so that the owner lets the call's place and early session go at
once instead of when they expire. Twilio's status callbacks reach any worker, so a call that
ended before its stream started is told to every worker (`ENDED`).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger(__name__)

_TAG = re.compile(rb"\.w(\d{1,4})$")
MAX_HEAD_BYTES = 60 * 1024  # a larger request head is served by the worker that read it
CONNECTION, STREAMING, ENDED = b"C", b"S", b"E"  # what a datagram carries: its first byte

Adopt = Callable[[socket.socket, bytes], None]  # a connection handed over, and the head read from it
Notice = Callable[[str], Awaitable[None]]  # news of a call, by its call_sid


def token_tag(index: int) -> str:
    """What ends the stream tokens worker `index` issues (URL-safe base64 has no dot)."""
    return f".w{index}"


def owner_of(target: bytes) -> int | None:
    """The worker named by the stream token at the end of a request target's path, if one is."""
    found = _TAG.search(target.split(b"?", 1)[0])
    return int(found.group(1)) if found else None


class Siblings:
    """This worker's end of the replica's datagram sockets, `{run_dir}/w{index}.sock`."""

    def __init__(self, run_dir: Path, index: int, count: int) -> None:
        self.index = index
        self._paths = [str(run_dir / f"w{i}.sock") for i in range(count)]
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        with contextlib.suppress(FileNotFoundError):  # left by this worker's predecessor
            os.unlink(self._paths[index])
        self._sock.bind(self._paths[index])
        self._adopt: Adopt | None = None
        self.notices: dict[bytes, Notice] = {}  # what to do with news of a call, by its kind
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = True

    def start(self, adopt: Adopt) -> None:
        """Take connections and news from the siblings from now on (on the running loop)."""
        self._adopt = adopt
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._receive)

    def hand_over(self, owner: int, head: bytes, fd: int) -> bool:
        """Pass the connection `fd` and the request head read from it to worker `owner`; whether it
        has it now (if not, the caller still does, and serves it)."""
        if not self._open or owner == self.index or not 0 <= owner < len(self._paths) or len(head) > MAX_HEAD_BYTES:
            return False
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        try:  # (not socket.send_fds: before Python 3.12 it drops the address)
            self._sock.sendmsg([CONNECTION + head], rights, 0, self._paths[owner])
        except OSError as error:  # exited, restarting, or its queue is full
            log.info("siblings.not_handed_over", owner=owner, error=repr(error))
            return False
        return True

    def tell(self, kind: bytes, call_sid: str) -> None:
        """News of a call for every sibling (those not there miss nothing they needed)."""
        message = kind + call_sid.encode()
        for index, path in enumerate(self._paths):
            if index != self.index and self._open:
                with contextlib.suppress(OSError):
                    self._sock.sendto(message, path)

    def close(self) -> None:
        """Take nothing more: siblings serve what they would have handed here themselves."""
        if not self._open:
            return
        self._open = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._paths[self.index])
        with contextlib.suppress(RuntimeError, ValueError):  # the loop is closed already
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()

    def _receive(self) -> None:
        while self._open:
            try:
                data, fds, flags, _ = socket.recv_fds(self._sock, MAX_HEAD_BYTES + 1, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("siblings.receive_failed", error=repr(error))
                return
            kind, body = data[:1], data[1:]
            whole = not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
            if kind == CONNECTION and len(fds) == 1 and whole and self._adopt is not None:
                self._adopt(socket.socket(fileno=fds[0]), body)
                continue
            for fd in fds:
                os.close(fd)
            notice = self.notices.get(kind)
            if notice is not None and body:
                task = asyncio.ensure_future(notice(body.decode(errors="replace")))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)


def handing_protocol(base: type[HttpToolsProtocol], siblings: Siblings) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol `base`, handing a WebSocket upgrade for another worker's stream token
    to that worker, and carrying on with a connection handed to it (`handed_head`)."""

    class HandingProtocol(base):  # type: ignore[valid-type, misc]
        handed_head = b""  # the request head a sibling read from this connection

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if self.handed_head:
                head, self.handed_head = self.handed_head, b""
                self.data_received(head)

        def handle_websocket_upgrade(self) -> None:
            owner = owner_of(self.url)
            if owner is None or owner == siblings.index or not self._hand_over(owner):
                super().handle_websocket_upgrade()

        def _hand_over(self, owner: int) -> bool:
            sock: Any = self.transport.get_extra_info("socket")
            if sock is None or self.transport.get_extra_info("sslcontext") is not None:
                return False  # TLS state cannot move between processes
            # The head as uvicorn itself rebuilds it for its WebSocket protocol.
            head = [self.scope["method"].encode(), b" ", self.url, b" HTTP/1.1\r\n"]
            for name, value in self.scope["headers"]:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"\r\n")
            if not siblings.hand_over(owner, b"".join(head), sock.fileno()):
                return False
            self.connections.discard(self)
            self.transport.close()  # our descriptor only: the owner's keeps the connection open
            return True

    return HandingProtocol
