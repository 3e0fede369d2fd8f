"""ElastiCache (Valkey or Redis OSS) replication group: cluster mode off, TLS, AUTH token.

Cluster mode stays off because the API reads many `ltp:*` keys with one MGET, which a
cluster-mode cache (and every ElastiCache Serverless cache) rejects across hash slots. Clients
connect with `rediss://<primary>:6379/0` and the AUTH token from the generated secret:
the Fargate containers get it as `REDIS_AUTH_TOKEN` (an ECS secret), the Lambda functions get
the secret's ARN as `REDIS_AUTH_SECRET_ARN` and resolve it at cold start.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticache as elasticache
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

REDIS_PORT = 6379
# Monday 01:30-02:30 IST: far from market hours and from the schedule's start.
MAINTENANCE_WINDOW = "sun:20:00-sun:21:00"
# 17:30-18:30 IST, after the close.
SNAPSHOT_WINDOW = "12:00-13:00"


class Cache(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        node_type: str,
        engine: str,
        engine_version: str,
        replicas: int,
        multi_az: bool,
    ) -> None:
        super().__init__(scope, construct_id)
        self.port = REDIS_PORT
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="ElastiCache: 6379 from the streamer task and the Lambda functions only",
            allow_all_outbound=False,
        )
        self.auth_secret = secretsmanager.Secret(
            self,
            "AuthToken",
            description="AUTH token of the LTP ElastiCache replication group",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                # ElastiCache tokens: 16-128 printable characters, none of / " @.
                exclude_punctuation=True,
                password_length=64,
            ),
            removal_policy=RemovalPolicy.DESTROY,
        )
        subnet_group = elasticache.CfnSubnetGroup(
            self,
            "Subnets",
            description="Private subnets of the LTP cache",
            subnet_ids=vpc.select_subnets(
                subnet_type=subnets.subnet_type or ec2.SubnetType.PRIVATE_WITH_EGRESS
            ).subnet_ids,
        )
        self.replication_group = elasticache.CfnReplicationGroup(
            self,
            "ReplicationGroup",
            replication_group_description="LTP cache, pub/sub and connection registry",
            engine=engine,
            engine_version=engine_version,
            cache_node_type=node_type,
            num_cache_clusters=1 + replicas,
            automatic_failover_enabled=replicas > 0,
            multi_az_enabled=multi_az,
            cache_subnet_group_name=subnet_group.ref,
            security_group_ids=[self.security_group.security_group_id],
            port=REDIS_PORT,
            transit_encryption_enabled=True,
            transit_encryption_mode="required",
            at_rest_encryption_enabled=True,
            auth_token=self.auth_secret.secret_value.unsafe_unwrap(),
            auto_minor_version_upgrade=True,
            preferred_maintenance_window=MAINTENANCE_WINDOW,
            snapshot_retention_limit=1,
            snapshot_window=SNAPSHOT_WINDOW,
        )
        self.endpoint_address = self.replication_group.attr_primary_end_point_address
        self.redis_url = f"rediss://{self.endpoint_address}:{REDIS_PORT}/0"

    def allow_from(self, peer: ec2.IConnectable, description: str) -> None:
        """Let one client (a security group holder) reach the cache port."""
        self.security_group.connections.allow_from(
            peer, ec2.Port.tcp(REDIS_PORT), description
        )
