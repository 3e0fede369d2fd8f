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


def boto3_client(gateway: LocalApiGateway, *, max_pool_connections: int = 32) -> ManagementApi:
    """The fan-out's own boto3 `apigatewaymanagementapi` client, pointed at the gateway (dummy
    credentials: the local endpoint does not verify the SigV4 signature)."""
    import boto3

    session = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local",
                                    region_name="us-east-1")
    return management_client(gateway.callback_url, max_pool_connections=max_pool_connections,
                             session=session)


class InProcessManagement:
    """PostToConnection into a gateway running on another thread's event loop."""

    def __init__(self, gateway: LocalApiGateway, *, timeout: float = 10.0) -> None:
        if gateway.loop is None:
            raise RuntimeError("start the gateway first")
        self._gateway = gateway
        self._loop = gateway.loop
        self._timeout = timeout

    def post_to_connection(self, *, Data: bytes, ConnectionId: str) -> Any:  # noqa: N803
        if self._gateway.config.post_latency:
            # The added round trip is the point of that setting: wait for it.
            future = asyncio.run_coroutine_threadsafe(
                self._gateway.post(ConnectionId, bytes(Data)), self._loop)
            result = future.result(self._timeout)
        else:
            result = self._gateway.post_nowait(
                ConnectionId, Data if isinstance(Data, bytes) else bytes(Data))
        if result.status != 200:
            response: Any = {"Error": {"Code": result.error, "Message": result.message},
                             "ResponseMetadata": {"HTTPStatusCode": result.status}}
            raise ClientError(response, "PostToConnection")
        return {"ResponseMetadata": {"HTTPStatusCode": 200}}

    def delete_connection(self, *, ConnectionId: str) -> Any:  # noqa: N803
        """DeleteConnection: starts closing the socket (its `$disconnect` follows); 410 when
        there is no such connection."""
        future = asyncio.run_coroutine_threadsafe(self._delete(ConnectionId), self._loop)
        if not future.result(self._timeout):
            gone: Any = {"Error": {"Code": "GoneException", "Message": ""},
                         "ResponseMetadata": {"HTTPStatusCode": 410}}
            raise ClientError(gone, "DeleteConnection")
        return {"ResponseMetadata": {"HTTPStatusCode": 204}}

    async def _delete(self, connection_id: str) -> bool:
        return self._gateway.delete(connection_id)


__all__ = ["InProcessManagement", "boto3_client", "management_client"]
