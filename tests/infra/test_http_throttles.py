"""Per-route throttles of the HTTP API and identity mode (a): the OIDC JWT authorizer.

The default template (cdk.json) is the session's synthesis; the OIDC variant is a second one
(seconds of jsii), so it carries the `cdk` marker like the other variant.
"""

from __future__ import annotations

from typing import Any

import aws_cdk
import pytest
from aws_cdk.assertions import Match, Template

from app import build_app
from core.errors import ConfigError
from infra.settings import DeploySettings, RouteThrottle
from tests.infra.helpers import Synthesized, cdk_json_context, logical_id

ROUTE_KEYS = {
    "GET /api/v1/current_prices", "POST /api/v1/current_prices", "GET /api/v1/ws_token",
    "GET /api/v1/health/market_stream", "POST /screeners/ltp/start",
    "POST /screeners/ltp/stop",
}  # fmt: skip
ISSUER = "https://login.example.com/realms/ltp/"


def settings_from(context: dict[str, object]) -> DeploySettings:
    return DeploySettings.from_context(aws_cdk.App(context=context).node)


def http_routes(template: Template, api: str) -> dict[str, dict[str, Any]]:
    return {r["Properties"]["RouteKey"]: r["Properties"]
            for r in template.find_resources("AWS::ApiGatewayV2::Route").values()
            if r["Properties"]["ApiId"] == {"Ref": api}}  # fmt: skip


def test_each_route_has_its_own_throttle_and_the_rest_the_stage_default(
    synthesized: Synthesized, template: Template
) -> None:
    api = logical_id(synthesized.stack, synthesized.stack.http.api)
    template.has_resource_properties(
        "AWS::ApiGatewayV2::Stage",
        {
            "ApiId": {"Ref": api},
            "StageName": "$default",
            "DefaultRouteSettings": {"ThrottlingRateLimit": 200, "ThrottlingBurstLimit": 400},
            "RouteSettings": {
                "GET /api/v1/current_prices": {"ThrottlingRateLimit": 200,
                                               "ThrottlingBurstLimit": 400},
                "POST /api/v1/current_prices": {"ThrottlingRateLimit": 200,
                                                "ThrottlingBurstLimit": 400},
                "GET /api/v1/ws_token": {"ThrottlingRateLimit": 50, "ThrottlingBurstLimit": 100},
                "GET /api/v1/health/market_stream": {"ThrottlingRateLimit": 10,
                                                     "ThrottlingBurstLimit": 20},
                "POST /screeners/ltp/start": {"ThrottlingRateLimit": 5,
                                              "ThrottlingBurstLimit": 10},
                "POST /screeners/ltp/stop": {"ThrottlingRateLimit": 5,
                                             "ThrottlingBurstLimit": 10},
            },
        },
    )  # fmt: skip


def test_throttled_routes_exist_before_the_stage_and_all_reach_the_function(
    synthesized: Synthesized, template: Template
) -> None:
    stack = synthesized.stack
    api = logical_id(stack, stack.http.api)
    routes = http_routes(template, api)
    assert set(routes) == ROUTE_KEYS | {"$default"}
    # Public mode (b) by default: nothing in front of the function but the throttles.
    assert {r["AuthorizationType"] for r in routes.values()} == {"NONE"}
    assert len({str(r["Target"]) for r in routes.values()}) == 1
    template.resource_count_is("AWS::ApiGatewayV2::Authorizer", 1)  # the WebSocket's $connect
    # CloudFormation refuses route settings naming a route that does not exist yet.
    stage = synthesized.resource(stack.http.stage)
    route_ids = {lid for lid, r in template.find_resources("AWS::ApiGatewayV2::Route").items()
                 if r["Properties"]["ApiId"] == {"Ref": api} and
                 r["Properties"]["RouteKey"] in ROUTE_KEYS}  # fmt: skip
    assert route_ids <= set(stage["DependsOn"])
    env = synthesized.resource(stack.http.function)["Properties"]["Environment"]["Variables"]
    assert "WS_TOKEN_IDENTITY" not in env


def test_throttle_context_forms_and_bad_values() -> None:
    settings = settings_from({"ltp:throttleWsToken": "7/9",
                              "ltp:throttleHealth": '{"rate": 1, "burst": 2}',
                              "ltp:throttleControl": {"rate": 3, "burst": 4}})  # fmt: skip
    assert settings.throttle_ws_token == RouteThrottle(7, 9)
    assert settings.throttle_health == RouteThrottle(1, 2)
    assert settings.throttle_control == RouteThrottle(3, 4)
    assert settings.throttle_prices == RouteThrottle(200, 400)
    for bad in ("fast", "1/", "1/2/3", {"rate": 1}, {"rate": 1, "burst": 2, "x": 3},
                {"rate": 1.5, "burst": 2}, {"rate": True, "burst": 2}):  # fmt: skip
        with pytest.raises(ConfigError, match="ltp:throttlePrices"):
            settings_from({"ltp:throttlePrices": bad})
    with pytest.raises(ConfigError, match="ltp:throttleHealth needs rate and burst >= 1"):
        settings_from({"ltp:throttleHealth": "0/5"})


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"ltp:oidcIssuer": ISSUER}, "set together"),
        ({"ltp:oidcAudience": "ltp-web"}, "set together"),
        ({"ltp:oidcIssuer": ISSUER, "ltp:oidcAudience": " , "}, "set together"),
        ({"ltp:oidcIssuer": "http://login.example.com", "ltp:oidcAudience": "a"}, "https://"),
        ({"ltp:oidcProtectPrices": "true"}, "oidcProtectPrices needs"),
    ],
)
def test_oidc_context_is_checked(context: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from(context)


def test_oidc_context_is_read() -> None:
    assert settings_from({}).oidc is None
    settings = settings_from({"ltp:oidcIssuer": ISSUER, "ltp:oidcAudience": "ltp-web, ltp-app"})
    assert settings.oidc is not None
    assert settings.oidc.audience == ("ltp-web", "ltp-app")
    assert settings.oidc.protect_prices is False


@pytest.fixture(scope="module")
def oidc_variant(tmp_path_factory: pytest.TempPathFactory) -> tuple[Template, str, str]:
    context = {
        **cdk_json_context(),
        "aws:cdk:bundling-stacks": [],
        "ltp:oidcIssuer": ISSUER,
        "ltp:oidcAudience": "ltp-web",
        "ltp:oidcProtectPrices": "true",
        "ltp:throttleWsToken": "20/40",
    }
    app = aws_cdk.App(context=context, outdir=str(tmp_path_factory.mktemp("oidc")))
    _, stack = build_app(app)
    template = Template.from_stack(stack)  # raises if cdk-nag finds anything unacknowledged
    return (template, logical_id(stack, stack.http.api),
            logical_id(stack, stack.http.function))  # fmt: skip


@pytest.mark.cdk
def test_oidc_puts_a_jwt_authorizer_on_ws_token_and_the_price_routes(
    oidc_variant: tuple[Template, str, str],
) -> None:
    template, api, function = oidc_variant
    authorizers = {lid: r["Properties"]
                   for lid, r in template.find_resources("AWS::ApiGatewayV2::Authorizer").items()
                   if r["Properties"]["ApiId"] == {"Ref": api}}  # fmt: skip
    ((jwt_id, jwt),) = authorizers.items()
    assert jwt["AuthorizerType"] == "JWT"
    assert jwt["IdentitySource"] == ["$request.header.Authorization"]
    assert jwt["JwtConfiguration"] == {"Issuer": ISSUER, "Audience": ["ltp-web"]}
    routes = http_routes(template, api)
    guarded = {k for k, r in routes.items() if r["AuthorizationType"] == "JWT"}
    assert guarded == {"GET /api/v1/ws_token", "GET /api/v1/current_prices",
                       "POST /api/v1/current_prices"}  # fmt: skip
    assert all(routes[k]["AuthorizerId"] == {"Ref": jwt_id} for k in guarded)
    # Control routes keep the admin key; health and the docs stay public.
    for key in ("POST /screeners/ltp/start", "GET /api/v1/health/market_stream", "$default"):
        assert routes[key]["AuthorizationType"] == "NONE"
    template.has_resource_properties("AWS::ApiGatewayV2::Stage", {
        "ApiId": {"Ref": api},
        "RouteSettings": Match.object_like({
            "GET /api/v1/ws_token": {"ThrottlingRateLimit": 20, "ThrottlingBurstLimit": 40}}),
    })  # fmt: skip
    # The function refuses a token request that reached it without a subject.
    env = template.find_resources("AWS::Lambda::Function")[function]["Properties"][
        "Environment"]["Variables"]  # fmt: skip
    assert env["WS_TOKEN_IDENTITY"] == "oidc"
