"""The template resolver of the deploy-shaped test (pure; a small hand-written template)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.deploy.cloud import scheduled_time
from tests.deploy.template import (
    Resolver,
    StandIns,
    Unresolvable,
    api_routes,
    ecs_secret_value,
    referenced_ids,
    schedules,
)

SECRET = "arn:aws:secretsmanager:ap-south-1:123456789012:secret:Dhan-AbCdEf"
TEMPLATE: dict[str, Any] = {
    "Resources": {
        "Cache": {"Type": "AWS::ElastiCache::ReplicationGroup", "Properties": {"Port": 6379}},
        "Api": {"Type": "AWS::ApiGatewayV2::Api",
                "Properties": {"ProtocolType": "WEBSOCKET",
                               "RouteSelectionExpression": "$request.body.action"}},
        "Stage": {"Type": "AWS::ApiGatewayV2::Stage",
                  "Properties": {"ApiId": {"Ref": "Api"}, "StageName": "live"}},
        "Dhan": {"Type": "AWS::SecretsManager::Secret", "Properties": {}},
        "Fn": {"Type": "AWS::Lambda::Function", "Properties": {
            "Handler": "functions.ws.connect", "Runtime": "python3.12",
            "Environment": {"Variables": {
                "REDIS_URL": {"Fn::Join": ["", ["rediss://", {"Fn::GetAtt": [
                    "Cache", "PrimaryEndPoint.Address"]}, ":6379/0"]]},
                "CALLBACK": {"Fn::Join": ["", ["https://", {"Ref": "Api"},
                                               ".execute-api.ap-south-1.",
                                               {"Ref": "AWS::URLSuffix"}, "/live"]]},
                "SECRET": {"Ref": "Dhan"},
                "SHARDS": 16,
            }}}},
        "Auth": {"Type": "AWS::Lambda::Function",
                 "Properties": {"Handler": "functions.ws.authorize", "Runtime": "python3.12"}},
        "Authorizer": {"Type": "AWS::ApiGatewayV2::Authorizer", "Properties": {
            "ApiId": {"Ref": "Api"}, "AuthorizerType": "REQUEST",
            "IdentitySource": ["route.request.querystring.token"],
            "AuthorizerUri": {"Fn::Join": ["", ["arn:aws:apigateway:ap-south-1:lambda:path/",
                                                {"Fn::GetAtt": ["Auth", "Arn"]}, "/invocations"]]},
        }},
        "Integration": {"Type": "AWS::ApiGatewayV2::Integration", "Properties": {
            "ApiId": {"Ref": "Api"}, "IntegrationType": "AWS_PROXY",
            "IntegrationUri": {"Fn::Join": ["", ["arn:...:functions/",
                                                 {"Fn::GetAtt": ["Fn", "Arn"]}, "/invocations"]]},
        }},
        "Connect": {"Type": "AWS::ApiGatewayV2::Route", "Properties": {
            "ApiId": {"Ref": "Api"}, "RouteKey": "$connect", "AuthorizationType": "CUSTOM",
            "AuthorizerId": {"Ref": "Authorizer"},
            "Target": {"Fn::Join": ["", ["integrations/", {"Ref": "Integration"}]]},
        }},
        "Stop": {"Type": "AWS::Scheduler::Schedule", "Properties": {
            "ScheduleExpression": "cron(45 15 ? * MON-FRI *)",
            "ScheduleExpressionTimezone": "Asia/Kolkata",
            "Target": {"Arn": {"Fn::GetAtt": ["Fn", "Arn"]}, "Input": '{"action":"stop"}'},
        }},
    }
}  # fmt: skip
STAND_INS = StandIns(
    refs={"Api": "abc123", "Dhan": SECRET, "Fn": "fn-name"},
    attributes={("Cache", "PrimaryEndPoint.Address"): "master.cache.amazonaws.com",
                ("Fn", "Arn"): "arn:aws:lambda:ap-south-1:123456789012:function:fn-name"},
    pseudo={"AWS::URLSuffix": "amazonaws.com", "AWS::Region": "ap-south-1"},
    endpoints={"master.cache.amazonaws.com:6379": "127.0.0.1:16380",
               "https://abc123.execute-api.ap-south-1.amazonaws.com": "http://127.0.0.1:9000"},
    secret_values={SECRET: json.dumps({"client_id": "1000000001", "access_token": "tok"})},
)  # fmt: skip


def resolver() -> Resolver:
    return Resolver(TEMPLATE, STAND_INS)


def test_a_function_environment_with_only_endpoints_substituted() -> None:
    r = resolver()
    assert r.function_environment("Fn") == {
        "REDIS_URL": "rediss://127.0.0.1:16380/0",
        "CALLBACK": "http://127.0.0.1:9000/live",
        "SECRET": SECRET,
        "SHARDS": "16",
    }
    assert r.endpoints_used == set(STAND_INS.endpoints)
    assert r.function_environment("Auth") == {}


def test_sub_select_split() -> None:
    r = resolver()
    assert r.text({"Fn::Sub": "${Api}.${AWS::Region}.${Fn.Arn} ${!Literal}"}, "x") == (
        "abc123.ap-south-1.arn:aws:lambda:ap-south-1:123456789012:function:fn-name ${Literal}")
    assert r.text({"Fn::Sub": ["${A}-${Api}", {"A": {"Ref": "Dhan"}}]}, "x") == (
        f"{SECRET}-abc123")
    assert r.text({"Fn::Select": [1, {"Fn::Split": [":", {"Ref": "Dhan"}]}]}, "x") == "aws"


@pytest.mark.parametrize("node, message", [
    ({"Ref": "Cache"}, "Ref Cache (AWS::ElastiCache::ReplicationGroup) has no local stand-in"),
    ({"Ref": "Nope"}, "Ref Nope (not in the template)"),
    ({"Fn::GetAtt": ["Cache", "PrimaryEndPoint.Port"]}, "PrimaryEndPoint.Port"),
    ({"Ref": "AWS::AccountId"}, "pseudo parameter AWS::AccountId"),
    ({"Fn::If": ["C", "a", "b"]}, "Fn::If is not evaluated here"),
    ({"Fn::ImportValue": "x"}, "Fn::ImportValue is not evaluated here"),
    ({"Fn::Sub": "${Nope}"}, "Ref Nope"),
    ({"Fn::Split": [",", "a,b"]}, "expected a string"),
])  # fmt: skip
def test_anything_unresolvable_raises(node: Any, message: str) -> None:
    with pytest.raises(Unresolvable, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolver().text(node, "where")


def test_ecs_secrets_as_ecs_injects_them() -> None:
    values = STAND_INS.secret_values
    assert ecs_secret_value(SECRET, values, "w") == values[SECRET]
    assert ecs_secret_value(f"{SECRET}:client_id::", values, "w") == "1000000001"
    assert ecs_secret_value(f"{SECRET}:access_token:AWSCURRENT:", values, "w") == "tok"
    with pytest.raises(Unresolvable, match="no JSON key 'nope'"):
        ecs_secret_value(f"{SECRET}:nope::", values, "w")
    with pytest.raises(Unresolvable, match="version AWSPREVIOUS"):
        ecs_secret_value(f"{SECRET}:client_id:AWSPREVIOUS:", values, "w")
    with pytest.raises(Unresolvable, match="names no secret"):
        ecs_secret_value("arn:aws:ssm:ap-south-1:123456789012:parameter/x", values, "w")
    container = {"Name": "c", "Environment": [{"Name": "A", "Value": {"Ref": "Api"}}],
                 "Secrets": [{"Name": "ID", "ValueFrom": {"Fn::Join": [
                     "", [{"Ref": "Dhan"}, ":client_id::"]]}}]}  # fmt: skip
    assert resolver().container_environment(container) == {"A": "abc123", "ID": "1000000001"}


def test_routes_and_schedules_follow_the_references() -> None:
    routes = api_routes(TEMPLATE, "Api")
    assert routes.routes == {"$connect": "Fn"}
    assert routes.authorizer == "Auth"
    assert routes.identity_source == ("route.request.querystring.token",)
    assert routes.stage == "live"
    (stop,) = schedules(TEMPLATE)
    assert (stop.target, stop.input, stop.timezone) == ("Fn", '{"action":"stop"}', "Asia/Kolkata")
    assert referenced_ids({"Fn::Sub": ["${Fn.Arn}${X}", {"X": {"Ref": "Api"}}]}) == {"Fn", "Api"}


def test_the_scheduled_time_is_the_latest_planned_firing() -> None:
    stop = "cron(45 15 ? * MON-FRI *)"
    wednesday_before_the_stop = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)  # 15:30 IST
    assert scheduled_time(stop, "Asia/Kolkata", now=wednesday_before_the_stop) == (
        "2026-12-01T10:15:00Z")
    monday_morning = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    assert scheduled_time(stop, "Asia/Kolkata", now=monday_morning) == "2026-11-27T10:15:00Z"
    assert scheduled_time(stop, "Asia/Kolkata", now=datetime(2026, 12, 2, 10, 15, tzinfo=UTC)
                          ) == "2026-12-02T10:15:00Z"
