"""cdk-nag (AwsSolutions) gates the synth; every acknowledgment carries a reason."""

from __future__ import annotations

import json

import aws_cdk
import pytest
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks

from tests.infra.helpers import Synthesized


def test_the_app_synthesizes_with_no_unacknowledged_finding(synthesized: Synthesized) -> None:
    # The fixture's synthesis raises on any finding; the report it leaves must agree.
    report = json.loads((synthesized.outdir / "validation-report.json").read_text())
    errors = [
        violation
        for plugin in report["pluginReports"]
        for violation in plugin.get("violations", [])
        if violation.get("severity") == "error"
    ]
    assert errors == []


def test_every_acknowledgment_is_in_the_template_with_a_reason(synthesized: Synthesized) -> None:
    acknowledged: dict[str, str] = {}
    for resource in synthesized.resources.values():
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            if rule["id"].startswith("AwsSolutions-"):
                acknowledged[rule["id"]] = rule["reason"]
    # The written metadata proves the AwsSolutions pack ran on this app.
    assert "AwsSolutions-APIG4" in acknowledged
    assert "AwsSolutions-ECS2" in acknowledged
    for rule, reason in acknowledged.items():
        assert len(reason) >= 40, f"{rule}: {reason!r} does not explain itself"
    # Nothing broad: no blanket IAM5 without the resource it is scoped to.
    assert "AwsSolutions-IAM5" not in acknowledged


def test_an_unacknowledged_finding_fails_the_synth() -> None:
    app = aws_cdk.App()
    stack = aws_cdk.Stack(app, "Probe")
    s3.Bucket(stack, "NoSsl", block_public_access=s3.BlockPublicAccess.BLOCK_ALL)
    aws_cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(RuntimeError, match=r"AwsSolutions-S10"):
        Template.from_stack(stack)
