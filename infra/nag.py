"""cdk-nag (AwsSolutions) acknowledgments, each with the reason it is acceptable here.

cdk-nag 3 runs as a CDK policy-validation plugin (`Validations.of(app).add_plugins(...)` in
app.py and the tests) and fails the synth on any finding not acknowledged. Acknowledgments are
as narrow as cdk-nag allows: on the construct that owns the finding, and for IAM wildcard
findings on the exact resource pattern (`AwsSolutions-IAM5[Resource::...]`), which names the
CloudFormation logical ID of the resource it is scoped to; those IDs are read from the stack,
never written down.
"""

from __future__ import annotations

from typing import Any, Protocol

from aws_cdk import Acknowledgment, CfnElement, DefaultStackSynthesizer, Token, Validations
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import IConstruct

from infra.cache import Cache
from infra.fanout import Fanout
from infra.http_api import HttpApi
from infra.instruments import InstrumentMaster
from infra.quotes import QuoteFunction
from infra.schedule import MarketSchedule
from infra.settings import DeploySettings
from infra.streamer_service import StreamerService
from infra.token_renewal import TokenRenewal
from infra.web import WebHosting
from infra.websocket_api import WebSocketApi


class NaggedStack(Protocol):
    """What the acknowledgments read of the stack (the stack itself imports this module)."""

    # Stack's own attributes that the acknowledgments read
    @property
    def partition(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def account(self) -> str: ...
    @property
    def node(self) -> Any: ...
    def get_logical_id(self, element: CfnElement) -> str: ...

    settings: DeploySettings
    cache: Cache
    dhan_secret: secretsmanager.Secret
    admin_secret: secretsmanager.Secret
    ws_token_secret: secretsmanager.Secret
    websocket: WebSocketApi
    fanout: Fanout
    streamer: StreamerService
    web: WebHosting
    http: HttpApi
    quotes: QuoteFunction
    schedule: MarketSchedule
    instruments: InstrumentMaster
    token_renewal: TokenRenewal

LAMBDA_BASIC_ROLE = (
    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
    "AWSLambdaBasicExecutionRole]"
)
LAMBDA_VPC_ROLE = (
    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
    "AWSLambdaVPCAccessExecutionRole]"
)


BASIC_ROLE_REASON = (
    "AWSLambdaBasicExecutionRole only lets a function write its own CloudWatch logs; it is the "
    "AWS-maintained minimum every Lambda role needs."
)


def acknowledge(construct: IConstruct, rule: str, reason: str) -> None:
    if not reason.strip():
        raise ValueError(f"acknowledging {rule} needs a reason")
    Validations.of(construct).acknowledge(Acknowledgment(id=rule, reason=reason))


def _pseudo(value: str, name: str) -> str:
    """How cdk-nag prints a pseudo parameter: the literal when known, `<AWS::X>` otherwise."""
    return f"<AWS::{name}>" if Token.is_unresolved(value) else value


def _ref(stack: NaggedStack, element: IConstruct | None) -> str:
    assert isinstance(element, CfnElement)
    return f"<{stack.get_logical_id(element)}>"


def _arn(stack: NaggedStack, element: IConstruct | None) -> str:
    assert isinstance(element, CfnElement)
    return f"<{stack.get_logical_id(element)}.Arn>"


def _iam5(resource: str) -> str:
    return f"AwsSolutions-IAM5[Resource::{resource}]"


def _stack_children(stack: NaggedStack, prefix: str) -> list[IConstruct]:
    return [child for child in stack.node.children if child.node.id.startswith(prefix)]


def acknowledge_findings(stack: NaggedStack) -> None:
    partition = _pseudo(stack.partition, "Partition")
    region = _pseudo(stack.region, "Region")
    account = _pseudo(stack.account, "AccountId")

    functions = [
        stack.http.handler,
        stack.quotes.handler,
        *stack.websocket.functions,
        stack.fanout.handler,
        stack.schedule.handler,
        stack.instruments.handler,
        stack.token_renewal.handler,
    ]
    for handler in functions:
        acknowledge(handler, LAMBDA_BASIC_ROLE, BASIC_ROLE_REASON)
        acknowledge(
            handler,
            LAMBDA_VPC_ROLE,
            "AWSLambdaVPCAccessExecutionRole lets a VPC function create and delete its "
            "network interfaces; the functions must be in the VPC to reach ElastiCache.",
        )
        acknowledge(
            handler,
            "AwsSolutions-L1",
            "Python 3.12 is pinned on purpose: the dependencies are bundled as cp312 manylinux "
            "wheels (infra/bundling.py PYTHON_VERSION); the runtime and the bundle move together.",
        )

    # API authorization.
    acknowledge(
        stack.http.api,
        "AwsSolutions-APIG4",
        "Prices and health are public market data the page reads without signing in; the "
        "start/stop routes check the admin bearer key (ADMIN_SECRET_ARN) inside the function, "
        "so that the local run enforces the same rule with the same code.",
    )
    acknowledge(
        stack.websocket.api,
        "AwsSolutions-APIG4",
        "API Gateway runs WebSocket authorizers on $connect only (which has the token "
        "authorizer); the other routes run on a connection that was already authorized.",
    )

    # Secrets without automatic rotation.
    acknowledge(
        stack.dhan_secret,
        "AwsSolutions-SMG4",
        "DhanHQ issues the access token (valid 24 h); the token-renewal function renews it "
        "with Dhan and puts the new token into this secret every 30-minute run that needs "
        "it (infra/token_renewal.py); Secrets Manager cannot generate such a value.",
    )
    acknowledge(
        stack.admin_secret,
        "AwsSolutions-SMG4",
        "Operator key generated at deploy; an unattended rotation would lock out whoever "
        "holds it. Rotated on demand with put-secret-value (README).",
    )
    acknowledge(
        stack.ws_token_secret,
        "AwsSolutions-SMG4",
        "Signing key of 1-minute, address-bound WebSocket connect tokens; rotating it on "
        "demand only invalidates outstanding tokens, which pages re-fetch.",
    )
    acknowledge(
        stack.cache.auth_secret,
        "AwsSolutions-SMG4",
        "The ElastiCache AUTH token changes only together with the replication group "
        "(ModifyReplicationGroup ROTATE); a Secrets Manager rotation alone would lock out "
        "every client.",
    )

    # The cache.
    if not stack.settings.cache_multi_az:
        acknowledge(
            stack.cache.replication_group,
            "AwsSolutions-AEC4",
            "Single node by default: the data is a 30-second price cache and a registry that "
            "clients rebuild; -c ltp:cacheReplicas=1 -c ltp:cacheMultiAz=true adds failover.",
        )

    # The streamer task.
    acknowledge(
        stack.streamer.task_definition,
        "AwsSolutions-ECS2",
        "Only non-secret settings (Redis URL, secret ARNs, modes, function name) are plain "
        "environment variables; credentials and the Redis AUTH token come from Secrets Manager.",
    )
    acknowledge(
        stack.streamer.task_definition.obtain_execution_role(),
        _iam5("*"),
        "ecr:GetAuthorizationToken has no resource-level permissions (AWS requires '*'); "
        "pulling the image itself is scoped to the asset repository.",
    )

    # WebSocket connection management, scoped to this API and stage.
    connections = (
        f"arn:{partition}:execute-api:{region}:{account}:"
        f"{_ref(stack, stack.websocket.api.node.default_child)}/"
        f"{stack.settings.ws_stage_name}/*/@connections/*"
    )
    for function in (stack.websocket.message.function, stack.fanout.function):
        acknowledge(
            function,
            _iam5(connections),
            "execute-api:ManageConnections on this WebSocket API's stage only; the wildcard is "
            "the connection id, which exists only at run time.",
        )

    # EventBridge Scheduler's target roles (stack-level, one per target function, made by
    # aws-cdk-lib); each role's policy names its own function only, so acknowledging both
    # patterns on every role widens none of them.
    scheduled = (
        ("market-hours", stack.schedule.function.node.default_child),
        ("instrument-master", stack.instruments.function.node.default_child),
        ("token-renewal", stack.token_renewal.function.node.default_child),
    )
    for role in _stack_children(stack, "SchedulerRoleForTarget"):
        for what, target in scheduled:
            acknowledge(
                role,
                _iam5(f"{_arn(stack, target)}:*"),
                f"The scheduler may invoke the {what} function (any version of it) and "
                "nothing else; the ':*' suffix is added by aws-cdk-lib's LambdaInvoke target.",
            )

    # Web hosting.
    distribution = stack.web.distribution
    acknowledge(
        distribution,
        "AwsSolutions-CFR1",
        "The page shows public market prices; no audience is excluded by country.",
    )
    acknowledge(
        distribution,
        "AwsSolutions-CFR2",
        "A static page served from S3 with no forms; the APIs have their own stage throttles. "
        "A WAF web ACL (about $5/month plus rules) can be attached when needed.",
    )
    acknowledge(
        distribution,
        "AwsSolutions-CFR3",
        "Standard logs need a second bucket with ACLs enabled; CloudFront's own metrics cover "
        "a static page. Enable with a log bucket when an audit trail is required.",
    )
    acknowledge(
        distribution,
        "AwsSolutions-CFR4",
        "No custom domain: the default *.cloudfront.net certificate is used, and CloudFront "
        "does not let its minimum TLS version be set. A custom domain certificate allows "
        "TLSv1.2_2021.",
    )
    acknowledge(
        stack.web.bucket,
        "AwsSolutions-S1",
        "Only CloudFront (origin access control) reads this bucket; every request is already "
        "counted by CloudFront, and the content is rebuilt from the repository on deploy.",
    )
    asset_bucket = (
        f"arn:{partition}:s3:::cdk-{DefaultStackSynthesizer.DEFAULT_QUALIFIER}-assets-"
        f"{account}-{region}/*"
    )
    site_objects = f"{_arn(stack, stack.web.bucket.node.default_child)}/*"
    for deployment in _stack_children(stack, "Custom::CDKBucketDeployment"):
        acknowledge(
            deployment,
            "AwsSolutions-L1",
            "aws-cdk-lib's BucketDeployment handler; its runtime is chosen by aws-cdk-lib.",
        )
        acknowledge(deployment, LAMBDA_BASIC_ROLE, BASIC_ROLE_REASON)
        for rule in (
            *(f"AwsSolutions-IAM5[Action::s3:{action}]"
              for action in ("Abort*", "DeleteObject*", "GetBucket*", "GetObject*", "List*")),
            _iam5("*"),
            _iam5(site_objects),
            _iam5(asset_bucket),
        ):
            acknowledge(
                deployment,
                rule,
                "aws-cdk-lib's BucketDeployment handler copies the site from the CDK asset "
                "bucket into the site bucket and invalidates CloudFront (no resource-level "
                "permission); its policy is generated by aws-cdk-lib and limited to those "
                "two buckets.",
            )
