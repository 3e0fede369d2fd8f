"""CDK entry point: the only place that knows accounts, regions and stages.

    npx cdk synth                        # offline: no Docker, no AWS credentials needed
    npx cdk deploy -c ltp:alarmEmail=ops@example.com
    npx cdk deploy -c ltp:stage=staging -c ltp:region=ap-south-1

Every other setting is CDK context too (see infra/settings.py and cdk.json).
"""

from __future__ import annotations

import os

# jsii (the bridge to aws-cdk-lib's JavaScript) warns on every run that Node 20 is past its end
# of life; the synthesized templates do not depend on the Node version.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

import aws_cdk as cdk  # noqa: E402
from cdk_nag import AwsSolutionsChecks  # noqa: E402

from infra.settings import PREFIX, DeploySettings  # noqa: E402
from infra.stack import LtpStack  # noqa: E402


def build_app(app: cdk.App | None = None) -> tuple[cdk.App, LtpStack]:
    app = app or cdk.App()
    node = app.node
    region = str(node.try_get_context(PREFIX + "region") or "ap-south-1")
    account = node.try_get_context(PREFIX + "account") or os.environ.get("CDK_DEFAULT_ACCOUNT")
    stage = str(node.try_get_context(PREFIX + "stage") or "prod")
    stack = LtpStack(
        app,
        f"Ltp-{stage}",
        settings=DeploySettings.from_context(node),
        env=cdk.Environment(account=str(account) if account else None, region=region),
        description=f"LTP live prices ({stage}): streamer, cache, APIs, fan-out, page",
    )
    cdk.Tags.of(stack).add("project", "ltp-stream")
    cdk.Tags.of(stack).add("stage", stage)
    # cdk-nag fails the synth on any finding that infra/nag.py does not acknowledge, and
    # copies each acknowledgment with its reason into the template (an audit trail).
    cdk.Validations.of(app).add_plugins(
        AwsSolutionsChecks(app, write_suppressions_to_cloud_formation=True)
    )
    return app, stack


if __name__ == "__main__":
    build_app()[0].synth()
