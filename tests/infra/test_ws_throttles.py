"""The WebSocket stage: `$connect` has a throttle bucket of its own, so that a message flood
(every message takes from the stage's bucket) cannot keep other pages from connecting."""

from __future__ import annotations

from aws_cdk.assertions import Template

from tests.infra.helpers import Synthesized, logical_id


def test_connect_has_its_own_bucket_and_the_stage_exists_after_the_route(
    synthesized: Synthesized, template: Template
) -> None:
    stack = synthesized.stack
    api = logical_id(stack, stack.websocket.api)
    stages = {lid: r for lid, r in template.find_resources("AWS::ApiGatewayV2::Stage").items()
              if r["Properties"]["ApiId"] == {"Ref": api}}
    ((stage_id, stage),) = stages.items()
    properties = stage["Properties"]
    assert properties["RouteSettings"] == {
        "$connect": {"ThrottlingRateLimit": 500, "ThrottlingBurstLimit": 1000}}
    assert properties["DefaultRouteSettings"]["ThrottlingRateLimit"] == 500
    connect = [lid for lid, r in template.find_resources("AWS::ApiGatewayV2::Route").items()
               if r["Properties"]["ApiId"] == {"Ref": api}
               and r["Properties"]["RouteKey"] == "$connect"]
    assert connect and set(connect) <= set(stage.get("DependsOn", [])), stage_id


def test_the_registry_cap_fits_the_cache_node(synthesized: Synthesized) -> None:
    """Connections at their 500-key cap fill at most half the node: 5,000 on the default
    cache.t4g.micro (0.5 GiB), the handlers' own 20,000 only on a node with room for it."""
    from infra.settings import DeploySettings

    props = synthesized.resource(synthesized.stack.websocket.connect.function)["Properties"]
    assert props["Environment"]["Variables"]["WS_MAX_CONNECTIONS"] == "5000"
    assert DeploySettings(cache_node_type="cache.t4g.small").ws_max_connections == 16_000
    assert DeploySettings(cache_node_type="cache.t4g.medium").ws_max_connections == 20_000
    assert DeploySettings(cache_node_type="cache.r7g.large").ws_max_connections == 20_000
