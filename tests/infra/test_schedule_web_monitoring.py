"""Market-hours schedules, web hosting with the deployment's config.json, alarms (heartbeat,
tick age in market hours, relay bridge heartbeat, fan-out, APIs, cache)."""

from __future__ import annotations

import json
import re
from typing import Any

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
        if target["Arn"] != {"Fn::GetAtt": [schedule_fn, "Arn"]}:
            continue  # the instrument-master load (tests/infra/test_instruments.py)
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
    own = {logical_id(stack, a) for a in stack.monitoring.alarms}
    alarms = [r for name, r in synthesized.resources.items() if name in own]
    assert len(alarms) >= 9
    # The token alarm breaches on missing data: the job that emits it not running is the
    # problem (tests/infra/test_token_renewal.py).
    breaching = {logical_id(stack, stack.token_renewal.seconds_left_alarm)}
    for name in own:
        alarm = synthesized.resources[name]
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic}]
        expected = "breaching" if name in breaching else "notBreaching"
        assert alarm["Properties"]["TreatMissingData"] == expected, name

    stale = [a["Properties"] for a in alarms if "Metrics" in a["Properties"]
             and any(m.get("Label") == "streamer running without heartbeat"
                     for m in a["Properties"]["Metrics"])]
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


def math_alarm(synthesized: Synthesized, metric_name: str) -> dict[str, Any]:
    """The one metric-math alarm that uses `metric_name`."""
    found = [
        a["Properties"] for a in synthesized.of_type("AWS::CloudWatch::Alarm")
        if any(m.get("MetricStat", {}).get("Metric", {}).get("MetricName") == metric_name
               for m in a["Properties"].get("Metrics", []))
    ]  # fmt: skip
    (props,) = found
    return props


def test_tick_age_alarm_watches_the_market_hours_metric(template: Template) -> None:
    template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Namespace": "LtpStream",
            # Emitted only while the market is open: LastTickAgeSeconds keeps growing all
            # night, so an alarm on it would fire after every close.
            "MetricName": "MarketTickAgeSeconds",
            "Dimensions": [{"Name": "service", "Value": "streamer"}],
            "Statistic": "Maximum",
            "Period": 60,
            "Threshold": 60,
            "EvaluationPeriods": 3,
            "DatapointsToAlarm": 3,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            # No metric outside market hours or with the task scaled to 0: not an outage.
            "TreatMissingData": "notBreaching",
        },
    )
    alarms = [a["Properties"] for a in template.find_resources("AWS::CloudWatch::Alarm").values()]
    assert [a.get("MetricName") for a in alarms].count("LastTickAgeSeconds") == 0


def test_bridge_alarm_needs_streamer_heartbeats_and_no_bridge_heartbeats(
    synthesized: Synthesized,
) -> None:
    props = math_alarm(synthesized, "BridgeHeartbeats")
    metrics = {m["Id"]: m for m in props["Metrics"]}
    bridge = metrics["bridge"]["MetricStat"]
    assert bridge["Metric"]["Namespace"] == "LtpStream"
    assert bridge["Metric"]["Dimensions"] == [{"Name": "service", "Value": "relay"}]
    assert (bridge["Stat"], bridge["Period"]) == ("Sum", 60)
    beats = metrics["beats"]["MetricStat"]
    assert beats["Metric"]["MetricName"] == "Heartbeats"
    assert beats["Metric"]["Dimensions"] == [{"Name": "service", "Value": "streamer"}]
    (expression,) = [m for m in props["Metrics"] if "Expression" in m]
    assert expression["ReturnData"] is True
    assert props["Threshold"] == 1
    assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert (props["EvaluationPeriods"], props["DatapointsToAlarm"]) == (3, 3)
    assert props["TreatMissingData"] == "notBreaching"

    # The expression per minute: 1 only when the streamer beats and the bridge does not.
    def evaluate(beats: float | None, bridge: float | None) -> float:
        return metric_math(expression["Expression"], beats=beats, bridge=bridge)

    assert evaluate(6, None) == 1 and evaluate(6, 0) == 1  # streamer up, bridge silent
    assert evaluate(6, 6) == 0 and evaluate(6, 1) == 0  # both up
    assert evaluate(None, None) == 0  # task scaled to 0 overnight
    assert evaluate(None, 6) == 0  # the streamer's own alarm covers a silent streamer


def metric_math(expression: str, **values: float | None) -> float:
    """The few CloudWatch metric-math functions the alarms use (IF, FILL, AND, OR, comparisons)
    evaluated for one datapoint; None is a metric with no datapoint in that minute."""
    python = re.sub(r"\bAND\b", " and ", re.sub(r"\bOR\b", " or ", expression))

    def fill(value: float | None, default: float) -> float:
        return default if value is None else value

    def if_(condition: bool, then: float, otherwise: float) -> float:
        return then if condition else otherwise

    python = python.replace("IF(", "if_(").replace("FILL(", "fill(")
    result = eval(python, {"__builtins__": {}}, {"if_": if_, "fill": fill, **values})  # noqa: S307
    return float(result)


def test_the_dashboard_graphs_the_new_metrics(synthesized: Synthesized) -> None:
    (dashboard,) = synthesized.of_type("AWS::CloudWatch::Dashboard")
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    assert "MarketTickAgeSeconds" in body and "BridgeHeartbeats" in body
