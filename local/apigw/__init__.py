"""A local stand-in for API Gateway's WebSocket API (see `gateway.py`).

- `config`: the handlers behind the routes, the gateway's settings and its injectable throttle.
- `gateway`: `LocalApiGateway`, the WebSocket side and PostToConnection.
- `posting`: the checks a post must pass and the write of its frame.
- `connections_http`: the `@connections` HTTP endpoint boto3 talks to.
- `events`: the Lambda events, shaped as AWS delivers them.
- `client`: `@connections` clients for code running beside the gateway.
"""

from __future__ import annotations

from local.apigw.config import GatewayConfig, Handlers, Throttle
from local.apigw.gateway import LocalApiGateway

__all__ = ["GatewayConfig", "Handlers", "LocalApiGateway", "Throttle"]
