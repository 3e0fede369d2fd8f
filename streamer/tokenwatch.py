"""Follow the DhanHQ token: switch every feed connection to a renewed one, one at a time.

The renewal job (functions.token) writes a new secret version and publishes `token_renewed`
on `core.names.CONTROL_CHANNEL`; the watcher then re-reads the credentials at once. It also
re-reads them every `poll` seconds (a message lost while Redis was away, a token put in by
hand). When they changed, `switch` reconnects the connections one after another with the new
token (`FeedConnection.switch`), so at most one connection is between sockets at a time, and
the coalescer keeps every key's newest value meanwhile.

Dhan keeps one token active: renewing may already have cut the old sockets (807) before the
message arrives; those connections re-read the token themselves, and a connection waiting in
its backoff is woken when new credentials appear (`TokenKeeper.add_listener`), so neither
path waits out a backoff. A failed re-read keeps the current token and retries with backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from core.backoff import Backoff
from core.names import CONTROL_CHANNEL, TOKEN_RENEWED
from streamer.aio import raise_if_cancelled
from streamer.connection import TokenKeeper

log = logging.getLogger(__name__)


def is_renewal(data: bytes | str) -> bool:
    try:
        message = json.loads(data)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("type") == TOKEN_RENEWED


class TokenWatcher:
    def __init__(
        self,
        *,
        redis: Redis,
        tokens: TokenKeeper,
        switch: Callable[[], Awaitable[int]],
        poll: float = 300.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._redis = redis
        self._tokens = tokens
        self._switch = switch
        self.poll = poll
        self._backoff = backoff or Backoff(base=1.0, cap=30.0)
        self.checks = 0
        self.errors = 0

    async def check(self) -> int:
        """Re-read the credentials, then switch every connection still on another token (a
        connection's own 807 re-read may have loaded the new one first); returns how many
        connections were switched."""
        self.checks += 1
        try:
            await self._tokens.refresh(self._tokens.generation)
        except Exception as exc:  # noqa: BLE001 - keep the current token, try again later
            self.errors += 1
            log.warning("token re-read failed (%s); keeping the current token", exc)
            return 0
        return await self._switch()

    async def run(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CONTROL_CHANNEL)
                    self._backoff.reset()
                    await self._follow(pubsub)
            except (RedisError, OSError) as exc:
                raise_if_cancelled()
                delay = self._backoff.next_delay()
                log.warning("control channel unreachable (%s); token poll only, resubscribing "
                            "in %.1fs", exc, delay)
                await self._sleep_polling(delay)

    async def _follow(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + self.poll
        while True:
            timeout = max(0.0, next_poll - loop.time())
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=timeout)
            raise_if_cancelled()
            if message is not None and not is_renewal(message.get("data", b"")):
                continue
            await self.check()
            next_poll = loop.time() + self.poll

    async def _sleep_polling(self, delay: float) -> None:
        """Wait `delay` while Redis is away, still polling the secret if the wait is long."""
        loop = asyncio.get_running_loop()
        end = loop.time() + delay
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(left, self.poll))
            if loop.time() < end:
                await self.check()
