"""PostToConnection without the server around it: the checks API Gateway makes before it takes
a message, in its order, and the write of the accepted frame.

Both the `@connections` HTTP endpoint and the in-process fan-out (`post_nowait`) post through
these, so a message is refused or delivered the same way whichever path it took.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from local.apigw.events import ConnectionInfo

# Unsent bytes a connection may hold before posts to it are refused with 429.
MAX_CLIENT_BUFFER_BYTES = 1024 * 1024

# A posted message as it goes out: its bytes and whether they are sent as a text frame.
Frame = tuple[bytes, bool]
NO_FRAME: Frame = (b"", False)


@dataclass(slots=True)
class OpenConnection:
    """A WebSocket the gateway holds open, with what the idle timeout and flow control need."""

    info: ConnectionInfo
    socket: ServerConnection
    connected_at: float
    last_active: float
    watchdog: asyncio.Task[None] | None = None
    queued: int = 0  # bytes accepted by post_nowait and not yet written to the socket
    deleted: bool = False  # DeleteConnection was called: closing, no more routes


@dataclass(frozen=True, slots=True)
class PostResult:
    status: int
    error: str = ""
    message: str = ""


THROTTLED = PostResult(429, "LimitExceededException", "Rate exceeded")


def judge(conn: OpenConnection | None, data: bytes, *, max_message_bytes: int
          ) -> tuple[PostResult, OpenConnection | None, Frame]:
    """What API Gateway answers a post that got past its throttle, and the frame to send (the
    connection is None unless the post is accepted)."""
    if conn is None:
        return PostResult(410, "GoneException", ""), None, NO_FRAME
    if len(data) > max_message_bytes:
        return (PostResult(413, "PayloadTooLargeException",
                           f"Message too long. Max size is {max_message_bytes}"),
                None, NO_FRAME)
    transport = conn.socket.transport
    unsent = conn.queued + (transport.get_write_buffer_size() if transport is not None else 0)
    if unsent > MAX_CLIENT_BUFFER_BYTES:
        # A client that stopped reading: refuse instead of buffering without bound; the
        # fan-out treats it as a throttle and carries the update into a later message.
        return PostResult(429, "LimitExceededException", "Client buffer full"), None, NO_FRAME
    if not data.isascii():  # JSON from orjson is ASCII unless it holds non-ASCII text
        try:
            data.decode()
        except UnicodeDecodeError:
            return PostResult(200), conn, (data, False)
    # Valid UTF-8 goes out as a text frame (as API Gateway sends posted JSON), without
    # decoding and re-encoding it.
    return PostResult(200), conn, (data, True)


def write_frame(socket_: ServerConnection, data: bytes, text: bool) -> None:
    """Write one whole frame now, through websockets' sans-I/O `protocol` and the transport:
    no task and no coroutine per message (half the gateway's CPU per post). Flow control is
    `judge`'s bound on what a connection holds; a closing connection loses the message, as
    a post to a closing connection on AWS does."""
    protocol = socket_.protocol
    transport = socket_.transport
    if protocol.state is not State.OPEN or transport is None or transport.is_closing():
        return
    if text:
        protocol.send_text(data)
    else:
        protocol.send_binary(data)
    for chunk in protocol.data_to_send():
        if chunk:
            transport.write(chunk)
