"""Network and cache: NAT egress, private placement, TLS + AUTH, cluster mode off."""

from __future__ import annotations

from aws_cdk.assertions import Match, Template

from tests.infra.helpers import Synthesized, logical_id


def test_the_vpc_has_public_and_private_subnets_and_one_nat(template: Template) -> None:
    template.resource_count_is("AWS::EC2::VPC", 1)
    template.resource_count_is("AWS::EC2::NatGateway", 1)  # ltp:natGateways in cdk.json
    template.has_resource_properties("AWS::EC2::Subnet", {"MapPublicIpOnLaunch": True})
    template.has_resource_properties("AWS::EC2::Subnet", {"MapPublicIpOnLaunch": False})
    template.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "REJECT"})


def test_the_cache_is_tls_only_with_auth_and_cluster_mode_off(synthesized: Synthesized) -> None:
    (group,) = synthesized.of_type("AWS::ElastiCache::ReplicationGroup")
    props = group["Properties"]
    assert props["TransitEncryptionEnabled"] is True
    assert props["TransitEncryptionMode"] == "required"
    assert props["AtRestEncryptionEnabled"] is True
    assert props["Engine"] == "valkey"
    # Cluster mode off: one node group, sized by NumCacheClusters (MGET across keys works).
    assert props["NumCacheClusters"] == 1
    assert "NumNodeGroups" not in props and "ReplicasPerNodeGroup" not in props
    assert props.get("ClusterMode", "disabled").lower() == "disabled"
    assert "CacheParameterGroupName" not in props  # the engine default (cluster-mode off)
    # The AUTH token is a deploy-time reference to the generated secret, never plain text.
    auth_secret = logical_id(synthesized.stack, synthesized.stack.cache.auth_secret)
    assert props["AuthToken"] == {
        "Fn::Join": ["", ["{{resolve:secretsmanager:", {"Ref": auth_secret}, ":SecretString:::}}"]]
    }


def test_only_the_streamer_and_the_lambdas_reach_port_6379(synthesized: Synthesized) -> None:
    stack = synthesized.stack
    cache_sg = logical_id(stack, stack.cache.security_group)
    allowed = {
        logical_id(stack, stack.lambda_security_group),
        logical_id(stack, stack.streamer.security_group),
    }
    rules = [
        r["Properties"]
        for r in synthesized.of_type("AWS::EC2::SecurityGroupIngress")
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": [cache_sg, "GroupId"]}
    ]
    assert {rule["SourceSecurityGroupId"]["Fn::GetAtt"][0] for rule in rules} == allowed
    assert all(rule["FromPort"] == rule["ToPort"] == 6379 for rule in rules)
    # No CIDR ingress and no egress from the cache's group.
    cache_group = synthesized.resources[cache_sg]
    assert "SecurityGroupIngress" not in cache_group["Properties"]
    assert cache_group["Properties"]["SecurityGroupEgress"][0]["CidrIp"] == "255.255.255.255/32"


def test_clients_get_a_rediss_url(template: Template) -> None:
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Environment": {
                "Variables": Match.object_like(
                    {
                        "REDIS_URL": {
                            "Fn::Join": [
                                "",
                                Match.array_with(["rediss://", ":6379/0"]),
                            ]
                        }
                    }
                )
            }
        },
    )
