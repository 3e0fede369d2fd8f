"""The streamer service: desired count 0, secrets from Secrets Manager, graceful stop, container
health checks."""

from __future__ import annotations

from typing import Any

from aws_cdk.assertions import Template

from tests.infra.helpers import Synthesized, logical_id


def containers(synthesized: Synthesized) -> dict[str, dict[str, Any]]:
    (task,) = synthesized.of_type("AWS::ECS::TaskDefinition")
    return {c["Name"]: c for c in task["Properties"]["ContainerDefinitions"]}


def test_the_service_starts_at_zero_in_private_subnets(template: Template) -> None:
    template.has_resource_properties(
        "AWS::ECS::Service",
        {
            "DesiredCount": 0,
            "LaunchType": "FARGATE",
            # Old task stops before the new one starts: never two streamers at once.
            "DeploymentConfiguration": {
                "MaximumPercent": 100,
                "MinimumHealthyPercent": 0,
                "DeploymentCircuitBreaker": {"Enable": True, "Rollback": True},
            },
            "NetworkConfiguration": {"AwsvpcConfiguration": {"AssignPublicIp": "DISABLED"}},
        },
    )
    template.has_resource_properties(
        "AWS::ECS::Cluster",
        {"ClusterSettings": [{"Name": "containerInsights", "Value": "enabled"}]},
    )


def test_streamer_and_bridge_run_in_one_task_and_stop_gracefully(
    synthesized: Synthesized,
) -> None:
    found = containers(synthesized)
    assert set(found) == {"streamer", "bridge"}
    assert found["streamer"]["Command"] == ["python", "-m", "streamer"]
    assert found["bridge"]["Command"] == ["python", "-m", "relay"]
    for container in found.values():
        assert container["Essential"] is True
        assert container["StopTimeout"] == 30
        assert container["LogConfiguration"]["LogDriver"] == "awslogs"
        # Both run the image built from streamer/Dockerfile (an asset in the CDK repository).
        assert "cdk-hnb659fds-container-assets" in str(container["Image"])


def test_credentials_come_from_secrets_manager_fields(synthesized: Synthesized) -> None:
    stack = synthesized.stack
    dhan = logical_id(stack, stack.dhan_secret)
    auth = logical_id(stack, stack.cache.auth_secret)
    streamer = containers(synthesized)["streamer"]
    secrets = {s["Name"]: s["ValueFrom"] for s in streamer["Secrets"]}
    assert secrets["DHAN_CLIENT_ID"] == {"Fn::Join": ["", [{"Ref": dhan}, ":client_id::"]]}
    assert secrets["DHAN_ACCESS_TOKEN"] == {"Fn::Join": ["", [{"Ref": dhan}, ":access_token::"]]}
    assert secrets["REDIS_AUTH_TOKEN"] == {"Ref": auth}
    environment = {e["Name"]: e["Value"] for e in streamer["Environment"]}
    assert environment["DHAN_SECRET_ARN"] == {"Ref": dhan}
    assert environment["STREAMER_AUTO_STOP"] == "false"
    assert not {"DHAN_ACCESS_TOKEN", "REDIS_AUTH_TOKEN"} & set(environment)

    bridge = containers(synthesized)["bridge"]
    bridge_env = {e["Name"]: e["Value"] for e in bridge["Environment"]}
    assert bridge_env["FANOUT_FUNCTION_NAME"] == {"Ref": logical_id(stack, stack.fanout.function)}
    assert bridge_env["WS_POST_BUDGET_PER_SECOND"] == "5000"
    assert {s["Name"] for s in bridge["Secrets"]} == {"REDIS_AUTH_TOKEN"}


def test_the_dhan_secret_is_a_placeholder_with_both_fields(template: Template) -> None:
    template.has_resource_properties(
        "AWS::SecretsManager::Secret",
        {
            "GenerateSecretString": {
                "SecretStringTemplate": '{"client_id": "REPLACE_ME"}',
                "GenerateStringKey": "access_token",
            }
        },
    )


def test_both_containers_have_a_liveness_health_check(synthesized: Synthesized) -> None:
    found = containers(synthesized)
    files = {"streamer": "/tmp/streamer.alive", "bridge": "/tmp/relay.alive"}
    for name, path in files.items():
        check = found[name]["HealthCheck"]
        assert check["Command"] == ["CMD", "python", "-m", "core.liveness", path, "90"]
        assert (check["Interval"], check["Retries"], check["StartPeriod"]) == (30, 3, 60)
        assert check["Timeout"] <= 10
        # The default file is the one the process touches: the template does not move it.
        environment = {e["Name"] for e in found[name]["Environment"]}
        assert "LIVENESS_FILE" not in environment
