"""Market-hours schedules, web hosting with the deployment's config.json, alarms."""

from __future__ import annotations

import json

from aws_cdk.assertions import Match, Template

from tests.infra.helpers import Synthesized, logical_id, references


def test_schedules_run_in_kolkata_on_weekdays_around_the_session(
    synthesized: Synthesized,
) -> None:
    stack = synthesized.stack
    schedule_fn = logical_id(stack, stack.schedule.function)
    by_action = {}
    for schedule in synthesized.of_type("AWS::Scheduler::Schedule"):
        props = schedule["Properties"]
        target = props["Target"]
        assert target["Arn"] == {"Fn::GetAtt": [schedule_fn, "Arn"]}
        payload = json.loads(target["Input"])
        assert payload["scheduledTime"] == "<aws.scheduler.scheduled-time>"
        by_action[payload["action"]] = props
    assert set(by_action) == {"start", "stop"}
    for props in by_action.values():
        assert props["ScheduleExpressionTimezone"] == "Asia/Kolkata"
        assert props["State"] == "ENABLED"
        assert props["FlexibleTimeWindow"] == {"Mode": "OFF"}
    # 09:00 is before the 09:15 open, 15:45 after the 15:30 close (cdk.json defaults).
    assert by_action["start"]["ScheduleExpression"] == "cron(0 9 ? * MON-FRI *)"
    assert by_action["stop"]["ScheduleExpression"] == "cron(45 15 ? * MON-FRI *)"


def test_the_page_is_private_in_s3_and_served_by_cloudfront(
    synthesized: Synthesized, template: Template
) -> None:
    template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            }
        },
    )
    template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {"PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Effect": "Deny",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        })])}},
    )
    template.has_resource_properties(
        "AWS::CloudFront::OriginAccessControl",
        {"OriginAccessControlConfig": Match.object_like({"OriginAccessControlOriginType": "s3"})},
    )
    template.has_resource_properties(
        "AWS::CloudFront::Distribution",
        {"DistributionConfig": Match.object_like({
            "DefaultRootObject": "index.html",
            "DefaultCacheBehavior": Match.object_like(
                {"ViewerProtocolPolicy": "redirect-to-https"}),
            "CacheBehaviors": [Match.object_like({"PathPattern": "/config.json"})],
        })},
    )


def test_config_json_carries_the_deployed_api_urls(synthesized: Synthesized) -> None:
    stack = synthesized.stack
    (deployment,) = synthesized.of_type("Custom::CDKBucketDeployment")
    props = deployment["Properties"]
    # web/ and config.json; the config's URLs are markers replaced at deploy time.
    assert len(props["SourceObjectKeys"]) == 2
    markers = props["SourceMarkers"][1]
    assert any(references(v, logical_id(stack, stack.http.api)) for v in markers.values())
    assert any(references(v, logical_id(stack, stack.websocket.api)) for v in markers.values())
    assert any("/api/v1/ws_token" in str(v) for v in markers.values())
    assert props["DistributionPaths"] == ["/*"]


def test_alarms_cover_heartbeat_fanout_and_api_errors(
    synthesized: Synthesized, template: Template
) -> None:
    stack = synthesized.stack
    topic = logical_id(stack, stack.monitoring.topic)
    alarms = synthesized.of_type("AWS::CloudWatch::Alarm")
    assert len(alarms) == 7
    for alarm in alarms:
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic}]
        assert alarm["Properties"]["TreatMissingData"] == "notBreaching"

    stale = [a["Properties"] for a in alarms if "Metrics" in a["Properties"]
             and any("heartbeat" in str(m.get("Label", "")) for m in a["Properties"]["Metrics"])]
    (stale_props,) = stale
    metrics = {m["Id"]: m for m in stale_props["Metrics"]}
    assert metrics["beats"]["MetricStat"]["Metric"]["Namespace"] == "LtpStream"
    assert metrics["beats"]["MetricStat"]["Metric"]["MetricName"] == "Heartbeats"
    assert metrics["running"]["MetricStat"]["Metric"]["MetricName"] == "RunningTaskCount"
    assert stale_props["EvaluationPeriods"] == 3

    template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Namespace": "AWS/Lambda",
            "MetricName": "Errors",
            "Dimensions": [{"Name": "FunctionName",
                            "Value": {"Ref": logical_id(stack, stack.fanout.function)}}],
        },
    )
    template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Namespace": "AWS/ApiGateway",
            "MetricName": "5xx",
            "Dimensions": [{"Name": "ApiId", "Value": {"Ref": logical_id(stack, stack.http.api)}}],
        },
    )
    template.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    template.has_resource_properties("AWS::SNS::TopicPolicy", {"PolicyDocument": {
        "Statement": Match.array_with([Match.object_like({"Effect": "Deny"})])}})
