"""Least privilege: no wildcard actions, and each powerful grant scoped to one resource."""

from __future__ import annotations

from tests.infra.helpers import (
    Synthesized,
    as_list,
    logical_id,
    policies_of_role,
    references,
    statements,
)


def test_no_allow_statement_has_a_wildcard_action(synthesized: Synthesized) -> None:
    offenders = [
        (policy, action)
        for policy, statement in statements(synthesized.resources)
        if statement.get("Effect") == "Allow"
        for action in as_list(statement.get("Action", []))
        if action == "*" or str(action).endswith(":*")
    ]
    assert offenders == []


def test_manage_connections_is_scoped_to_this_websocket_stage(synthesized: Synthesized) -> None:
    stack = synthesized.stack
    api = logical_id(stack, stack.websocket.api)
    grants = [
        (policy, statement)
        for policy, statement in statements(synthesized.resources)
        if "execute-api:ManageConnections" in as_list(statement.get("Action", []))
    ]
    holders = {
        logical_id(stack, stack.websocket.message.function.role),
        logical_id(stack, stack.fanout.function.role),
    }
    granted_roles = set()
    for policy, statement in grants:
        for resource in as_list(statement["Resource"]):
            assert references(resource, api), resource
            assert "/live/*/@connections/*" in str(resource)
        granted_roles.update(r["Ref"] for r in synthesized.resources[policy]["Properties"]["Roles"])
    assert granted_roles == holders


def test_the_task_role_may_invoke_only_the_fanout(synthesized: Synthesized) -> None:
    stack = synthesized.stack
    task_role = logical_id(stack, stack.streamer.task_definition.task_role)
    found = policies_of_role(synthesized.resources, task_role)
    invoke = [s for s in found if "lambda:InvokeFunction" in as_list(s["Action"])]
    (statement,) = invoke
    assert statement["Resource"] == {
        "Fn::GetAtt": [logical_id(stack, stack.fanout.function), "Arn"]
    }
    actions = {a for s in found for a in as_list(s["Action"])}
    assert actions == {
        "lambda:InvokeFunction",
        "secretsmanager:GetSecretValue",
        "secretsmanager:DescribeSecret",
    }


def test_only_the_api_and_scheduler_scale_the_streamer_service(synthesized: Synthesized) -> None:
    stack = synthesized.stack
    service = logical_id(stack, stack.streamer.service)
    scaling = [
        (policy, statement)
        for policy, statement in statements(synthesized.resources)
        if "ecs:UpdateService" in as_list(statement.get("Action", []))
    ]
    roles = set()
    for policy, statement in scaling:
        assert statement["Resource"] == {"Ref": service}
        roles.update(r["Ref"] for r in synthesized.resources[policy]["Properties"]["Roles"])
    assert roles == {
        logical_id(stack, stack.http.function.role),
        logical_id(stack, stack.schedule.function.role),
    }


def test_each_secret_is_readable_only_by_its_users(synthesized: Synthesized) -> None:
    stack = synthesized.stack

    def readers(secret: object) -> set[str]:
        secret_id = logical_id(stack, secret)
        roles = set()
        for policy, statement in statements(synthesized.resources):
            if "secretsmanager:GetSecretValue" in as_list(statement.get("Action", [])) and (
                {"Ref": secret_id} in as_list(statement["Resource"])
            ):
                roles.update(
                    r["Ref"] for r in synthesized.resources[policy]["Properties"]["Roles"]
                )
        return roles

    def role(function: object) -> str:
        return logical_id(stack, function.role)

    task_role = logical_id(stack, stack.streamer.task_definition.task_role)
    execution_role = logical_id(stack, stack.streamer.task_definition.execution_role)
    assert readers(stack.admin_secret) == {role(stack.http.function)}
    assert readers(stack.ws_token_secret) == {
        role(stack.http.function), role(stack.websocket.authorize.function)
    }
    assert readers(stack.dhan_secret) == {
        role(stack.quotes.function), role(stack.token_renewal.function), task_role, execution_role
    }
    assert readers(stack.cache.auth_secret) == {
        *(role(f) for f in stack.redis_functions), execution_role
    }


def test_the_public_api_function_cannot_read_the_dhan_token(synthesized: Synthesized) -> None:
    """The API's misses go through the quotes function: the API function is not told the
    Dhan secret, may not read it, and may invoke the quotes function and no other; nothing
    else may invoke the quotes function (no API route, no resource policy)."""
    stack = synthesized.stack
    api = synthesized.resource(stack.http.function)["Properties"]
    assert "DHAN_SECRET_ARN" not in api["Environment"]["Variables"]
    dhan = logical_id(stack, stack.dhan_secret)
    found = policies_of_role(synthesized.resources, logical_id(stack, stack.http.function.role))
    assert [s for s in found if references(s.get("Resource"), dhan)] == []
    (invoke,) = [s for s in found if "lambda:InvokeFunction" in as_list(s["Action"])]
    assert invoke["Resource"] == {"Fn::GetAtt": [logical_id(stack, stack.quotes.function), "Arn"]}

    quotes = logical_id(stack, stack.quotes.function)
    permissions = [r for r in synthesized.of_type("AWS::Lambda::Permission")
                   if references(r["Properties"].get("FunctionName"), quotes)]  # fmt: skip
    assert permissions == []
    invokers = {
        role["Ref"]
        for policy, statement in statements(synthesized.resources)
        if "lambda:InvokeFunction" in as_list(statement.get("Action", []))
        and references(statement.get("Resource"), quotes)
        for role in synthesized.resources[policy]["Properties"]["Roles"]
    }
    assert invokers == {logical_id(stack, stack.http.function.role)}
