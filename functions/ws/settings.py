"""Settings of the real-time path (WebSocket handlers, fan-out), beyond `functions.settings`.

Read once from the environment through `core.config.Env`; the shared ones (REDIS_URL,
WS_TOKEN_SECRET(_ARN), WEBSOCKET_CALLBACK_URL, ...) live in `functions.settings.Settings`.

| variable | default | meaning |
|---|---|---|
| WS_SHARDS | 16 | connection shards; one fan-out invocation handles one shard |
| WS_MAX_KEYS_PER_CONNECTION | 1000 | subscription limit of one connection |
| WS_MAX_CLIENT_MESSAGE_BYTES | 65536 | larger client messages are answered with `error` |
| FANOUT_MAX_WORKERS | 32 | concurrent PostToConnection calls of one fan-out invocation |
| FANOUT_RETRY_SECONDS | 1.0 | time a throttled post is retried before it is carried forward |
| FANOUT_MAX_MESSAGE_BYTES | 32768 | one message's size (API Gateway meters in 32 KB units) |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.config import Env


@dataclass(frozen=True, slots=True)
class RealtimeSettings:
    shards: int = 16
    max_keys: int = 1000
    max_client_message_bytes: int = 64 * 1024
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
            max_keys=env.integer("WS_MAX_KEYS_PER_CONNECTION", 1000, minimum=1),
            max_client_message_bytes=env.integer("WS_MAX_CLIENT_MESSAGE_BYTES", 64 * 1024,
                                                 minimum=1024),
            fanout_workers=env.integer("FANOUT_MAX_WORKERS", 32, minimum=1),
            fanout_retry_seconds=env.number("FANOUT_RETRY_SECONDS", 1.0, minimum=0.0),
            fanout_max_message_bytes=env.integer("FANOUT_MAX_MESSAGE_BYTES", 32 * 1024,
                                                 minimum=1024),
        )
