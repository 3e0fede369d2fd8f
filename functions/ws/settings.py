"""Settings of the real-time path (WebSocket handlers, fan-out), beyond `functions.settings`.

Read once from the environment through `core.config.Env`; the shared ones (REDIS_URL,
WS_TOKEN_SECRET(_ARN), WEBSOCKET_CALLBACK_URL, ...) live in `functions.settings.Settings`.

| variable | default | meaning |
|---|---|---|
| WS_SHARDS | 16 | connection shards; one fan-out invocation handles one shard |
| WS_MAX_KEYS_PER_CONNECTION | 500 | subscription limit of one connection |
| WS_MAX_CLIENT_MESSAGE_BYTES | 65536 | larger client messages are answered with `error` |
| WS_MAX_CONNECTIONS_PER_IP | 20 | live connections per source address (429 past it); 0: none |
| WS_MAX_CONNECTIONS | 20000 | live connections in all (503 past it); 0: no cap |
| WS_MESSAGE_RATE | 5 | messages per second a connection may send, sustained; 0: no limit |
| WS_MESSAGE_BURST | 20 | messages a connection may send at once |
| WS_ABUSE_STRIKES | 3 | penalty windows in a row over the rate that disconnect a connection |
| WS_ABUSE_COOL_OFF_SECONDS | 600 | an address cut for its rate may not reconnect for this long |
| FANOUT_MAX_WORKERS | 32 | concurrent PostToConnection calls of one fan-out invocation |
| FANOUT_RETRY_SECONDS | 1.0 | time a throttled post is retried before it is carried forward |
| FANOUT_MAX_MESSAGE_BYTES | 32768 | one message's size (API Gateway meters in 32 KB units) |

Why these limits: the page shows at most 500 rows, so a connection needs no more keys. A page
holds one connection (two for a moment when it rotates before API Gateway's 2 h), so 20 per
address leaves room for a household or a small office behind one NAT while one script cannot fill
the registry; 20,000 in all is well above the thousands of viewers the system is built for and
bounds what the registry holds (its costs are in `realtime.registry`). A page sends a subscribe
per watchlist change and a ping every few minutes (every 15 s while the stream is silent): far
under 5 per second, and its opening burst (a subscribe and a ping) far under 20.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.config import Env


@dataclass(frozen=True, slots=True)
class RealtimeSettings:
    shards: int = 16
    max_keys: int = 500
    max_client_message_bytes: int = 64 * 1024
    max_connections_per_ip: int = 20
    max_connections: int = 20_000
    message_rate: float = 5.0
    message_burst: int = 20
    abuse_strikes: int = 3
    # An abuser's script reconnects at once: without a cool-off each connect its tokens allow
    # buys it another few seconds of messages (bench/bench_abuse.py prints the difference).
    abuse_cool_off_seconds: int = 600
    # Posting threads per invocation. A post costs ~1 ms of CPU in boto3, so one vCPU posts
    # ~1,000/s: 32 in flight cover a 30 ms round trip; 64 measured ~25% more CPU per post from
    # GIL contention (bench_fanout, 2 processes x 16 / 32 / 64 workers).
    fanout_workers: int = 32
    fanout_retry_seconds: float = 1.0
    fanout_max_message_bytes: int = 32 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RealtimeSettings:
        env = Env(environ)
        return cls(
            shards=env.integer("WS_SHARDS", 16, minimum=1),
            max_keys=env.integer("WS_MAX_KEYS_PER_CONNECTION", 500, minimum=1),
            max_client_message_bytes=env.integer("WS_MAX_CLIENT_MESSAGE_BYTES", 64 * 1024,
                                                 minimum=1024),
            max_connections_per_ip=env.integer("WS_MAX_CONNECTIONS_PER_IP", 20, minimum=0),
            max_connections=env.integer("WS_MAX_CONNECTIONS", 20_000, minimum=0),
            message_rate=env.number("WS_MESSAGE_RATE", 5.0, minimum=0.0),
            message_burst=env.integer("WS_MESSAGE_BURST", 20, minimum=1),
            abuse_strikes=env.integer("WS_ABUSE_STRIKES", 3, minimum=1),
            abuse_cool_off_seconds=env.integer("WS_ABUSE_COOL_OFF_SECONDS", 600, minimum=0),
            fanout_workers=env.integer("FANOUT_MAX_WORKERS", 32, minimum=1),
            fanout_retry_seconds=env.number("FANOUT_RETRY_SECONDS", 1.0, minimum=0.0),
            fanout_max_message_bytes=env.integer("FANOUT_MAX_MESSAGE_BYTES", 32 * 1024,
                                                 minimum=1024),
        )
