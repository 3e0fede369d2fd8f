"""`@connections` clients for code running beside a `LocalApiGateway`.

`boto3_client` is the real thing over HTTP (what tests and the fan-out benchmark use).
`InProcessManagement` skips HTTP for the local run: the same fan-out code posts straight into
the gateway's event loop from its worker threads and gets the same botocore `ClientError`s.
"""

from __future__ import annotations

import asyncio
from typing import Any

from botocore.exceptions import ClientError

from functions.ws.management import ManagementApi, management_client
from local.apigw.gateway import LocalApiGateway


def boto3_client(gateway: LocalApiGateway, *, max_pool_connections: int = 64) -> ManagementApi:
    """boto3 `apigatewaymanagementapi` pointed at the gateway (dummy credentials: no SigV4)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local",
                                    region_name="us-east-1")
    config = Config(max_pool_connections=max_pool_connections,
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=2, read_timeout=5)
    client: ManagementApi = session.client("apigatewaymanagementapi",
                                           endpoint_url=gateway.callback_url, config=config)
    return client


class InProcessManagement:
    """PostToConnection into a gateway running on another thread's event loop."""

    def __init__(self, gateway: LocalApiGateway, *, timeout: float = 10.0) -> None:
        if gateway.loop is None:
            raise RuntimeError("start the gateway first")
        self._gateway = gateway
        self._loop = gateway.loop
        self._timeout = timeout

    def post_to_connection(self, *, Data: bytes, ConnectionId: str) -> Any:  # noqa: N803
        future = asyncio.run_coroutine_threadsafe(
            self._gateway.post(ConnectionId, bytes(Data)), self._loop)
        result = future.result(self._timeout)
        if result.status != 200:
            response: Any = {"Error": {"Code": result.error, "Message": result.message},
                             "ResponseMetadata": {"HTTPStatusCode": result.status}}
            raise ClientError(response, "PostToConnection")
        return {"ResponseMetadata": {"HTTPStatusCode": 200}}


__all__ = ["InProcessManagement", "boto3_client", "management_client"]
