"""The API Gateway `@connections` client: the calls used, and their errors classified.

boto3's `apigatewaymanagementapi` client satisfies `ManagementApi` and is thread-safe, so one
client (with a connection pool as large as the posting pool) serves every thread. Closing a
connection (DeleteConnection) is needed only by the WebSocket handlers, so it is a separate
protocol that posting-only stand-ins need not implement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)


class ManagementApi(Protocol):
    def post_to_connection(self, *, Data: bytes, ConnectionId: str) -> Any: ...  # noqa: N803


@runtime_checkable
class ClosingManagementApi(Protocol):
    def delete_connection(self, *, ConnectionId: str) -> Any: ...  # noqa: N803


class PostOutcome(Enum):
    SENT = "sent"
    GONE = "gone"  # 410: the connection is gone for good; forget it
    THROTTLED = "throttled"  # 429: account rate or the client's buffer; back off and retry
    TOO_LARGE = "too_large"  # 413: never retried
    FAILED = "failed"  # anything else (403, 5xx, network): carried forward like a throttle


def classify(exc: Exception) -> PostOutcome:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "GoneException" or status == 410:
            return PostOutcome.GONE
        if code in ("LimitExceededException", "TooManyRequestsException",
                    "ThrottlingException") or status == 429:
            return PostOutcome.THROTTLED
        if code == "PayloadTooLargeException" or status == 413:
            return PostOutcome.TOO_LARGE
        return PostOutcome.FAILED
    if isinstance(exc, BotoCoreError | OSError):
        return PostOutcome.FAILED
    raise exc


def post(api: ManagementApi, connection_id: str, data: bytes) -> PostOutcome:
    """One PostToConnection; returns what happened instead of raising AWS errors."""
    try:
        api.post_to_connection(Data=data, ConnectionId=connection_id)
    except Exception as exc:  # noqa: BLE001 - classify() re-raises what is not an AWS error
        return classify(exc)
    return PostOutcome.SENT


def delete(api: ManagementApi, connection_id: str) -> PostOutcome:
    """One DeleteConnection (API Gateway closes the socket, then sends `$disconnect`): SENT
    when it was closed, GONE when it already was; FAILED when `api` cannot close at all."""
    if not isinstance(api, ClosingManagementApi):
        log.warning("%s cannot close connections (no delete_connection)", type(api).__name__)
        return PostOutcome.FAILED
    try:
        api.delete_connection(ConnectionId=connection_id)
    except Exception as exc:  # noqa: BLE001 - classify() re-raises what is not an AWS error
        return classify(exc)
    return PostOutcome.SENT


def management_client(endpoint_url: str, *, max_pool_connections: int = 32,
                      region_name: str | None = None, session: Any = None) -> ManagementApi:
    """A boto3 client for `endpoint_url` (`https://{api}.execute-api.{region}.../{stage}`).

    `session` (a `boto3.session.Session`) supplies other credentials than the environment's;
    the local gateway and the benchmark pass one so that they post with this exact config.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        max_pool_connections=max_pool_connections,
        # Retries are ours: throttled posts are retried within the window, then carried forward.
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=2,
        read_timeout=5,
        tcp_keepalive=True,
        # The fan-out builds every parameter itself; validating them costs CPU on each post.
        parameter_validation=False,
    )
    # Measured on 2 cores (bench_fanout, 10 ms round trip): ~0.7 ms CPU per post single-threaded
    # is botocore's own floor (SigV4, request/response objects, event hooks); legacy retries,
    # checksum "when_required", no keep-alive or removing optional hooks change it by < 5%.
    client: ManagementApi = (session or boto3).client(
        "apigatewaymanagementapi", endpoint_url=endpoint_url, region_name=region_name,
        config=config)
    return client


ClientFactory = Callable[[str], ManagementApi]
