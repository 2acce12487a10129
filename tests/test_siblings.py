"""Between the workers of a replica (`phonebot.siblings`), on real sockets in one process: a
connection handed over moves whole (the bytes its peer sends reach the new owner), news of a call
reaches every sibling, and a hand-over that cannot happen says so, leaving the connection where it was."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from phonebot.siblings import ENDED, MAX_HEAD_BYTES, STREAMING, Siblings, owner_of, token_tag

HEAD = b"GET /twilio/media/abc.w1 HTTP/1.1\r\nhost: bot\r\nupgrade: websocket\r\n\r\n"


def test_the_owner_is_the_tag_at_the_end_of_the_token() -> None:
    assert token_tag(3) == ".w3"
    assert owner_of(b"/twilio/media/Zm9vYmFy_-x" + token_tag(3).encode()) == 3
    assert owner_of(b"/twilio/media/Zm9vYmFy.w12?x=1") == 12
    assert owner_of(b"/twilio/media/Zm9vYmFy") is None
    assert owner_of(b"/twilio/media/Zm9vYmFy.w1/more") is None
    assert owner_of(b"/healthz") is None


async def test_a_connection_handed_over_is_the_new_owners_whole(tmp_path: Path) -> None:
    handing, owning = Siblings(tmp_path, 0, 2), Siblings(tmp_path, 1, 2)
    adopted: asyncio.Queue[tuple[socket.socket, bytes]] = asyncio.Queue()
    owning.start(lambda sock, head: adopted.put_nowait((sock, head)))
    ours, peer = socket.socketpair()
    try:
        assert handing.hand_over(1, HEAD, ours.fileno())
        ours.close()  # the hander's descriptor goes; the connection stays open in the owner
        sock, head = await asyncio.wait_for(adopted.get(), 2)
        assert head == HEAD
        peer.sendall(b"after the hand-over")
        sock.setblocking(True)
        assert sock.recv(100) == b"after the hand-over"
        sock.sendall(b"from the owner")
        assert peer.recv(100) == b"from the owner"
        sock.close()
    finally:
        peer.close()
        handing.close()
        owning.close()


async def test_a_hand_over_that_cannot_happen_leaves_the_connection_where_it_was(tmp_path: Path) -> None:
    handing, gone = Siblings(tmp_path, 0, 3), Siblings(tmp_path, 1, 3)
    gone.close()  # it exited: its socket is gone
    ours, peer = socket.socketpair()
    try:
        assert not handing.hand_over(1, HEAD, ours.fileno())  # gone
        assert not handing.hand_over(2, HEAD, ours.fileno())  # never started
        assert not handing.hand_over(0, HEAD, ours.fileno())  # itself
        assert not handing.hand_over(7, HEAD, ours.fileno())  # no such worker
        assert not handing.hand_over(1, b"x" * (MAX_HEAD_BYTES + 1), ours.fileno())
        ours.sendall(b"still ours")
        assert peer.recv(100) == b"still ours"
    finally:
        ours.close()
        peer.close()
        handing.close()


async def test_news_of_a_call_reaches_every_sibling(tmp_path: Path) -> None:
    workers = [Siblings(tmp_path, index, 3) for index in range(3)]
    heard: asyncio.Queue[tuple[int, bytes, str]] = asyncio.Queue()

    def notices(index: int) -> dict[bytes, object]:
        async def streaming(call_sid: str) -> None:
            heard.put_nowait((index, STREAMING, call_sid))

        async def ended(call_sid: str) -> None:
            heard.put_nowait((index, ENDED, call_sid))

        return {STREAMING: streaming, ENDED: ended}

    try:
        for index, worker in enumerate(workers):
            worker.notices = notices(index)  # type: ignore[assignment]
            worker.start(lambda sock, head: sock.close())
        workers[0].tell(STREAMING, "CA1")
        workers[2].tell(ENDED, "CA2")
        got = {await asyncio.wait_for(heard.get(), 2) for _ in range(4)}
        assert got == {(1, STREAMING, "CA1"), (2, STREAMING, "CA1"), (0, ENDED, "CA2"), (1, ENDED, "CA2")}
        await asyncio.sleep(0.1)
        assert heard.empty()  # nobody hears its own news
    finally:
        for worker in workers:
            worker.close()
