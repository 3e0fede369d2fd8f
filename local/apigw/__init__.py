"""A local stand-in for API Gateway's WebSocket API (see `gateway.py`)."""

from __future__ import annotations

from local.apigw.gateway import GatewayConfig, Handlers, LocalApiGateway, Throttle

__all__ = ["GatewayConfig", "Handlers", "LocalApiGateway", "Throttle"]
