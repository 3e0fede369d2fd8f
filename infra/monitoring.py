"""Alarms, a dashboard and (optionally) a monthly cost budget, all notifying one SNS topic.

The task's own metrics are EMF lines on stdout, namespace `LtpStream`:
  streamer (dimension `service=streamer`), one line per heartbeat written to Redis (10 s):
    `Heartbeats` (Count, 1), `Ticks`, `LastTickAgeSeconds` (whenever a tick was seen) and
    `MarketTickAgeSeconds` (only while the market is open and keys are subscribed)
  relay bridge (dimension `service=relay`): `BridgeHeartbeats` (Count, 1 per ~10 s heartbeat)

Alarms on them, each quiet when the service is scaled to 0 (nights, weekends, holidays):
  StaleHeartbeat  ECS says the task runs but no streamer heartbeat for 3 minutes: a hung
                  process or a crash loop.
  MarketTickAge   the newest tick older than 60 s in 3 consecutive minutes while the market is
                  open: the feed is down, mute or refusing us (806/810), or every connection
                  is backing off. The metric is absent outside market hours, so missing data
                  is not breaching.
  BridgeHeartbeat the streamer beats (its `Heartbeats` are there) but no bridge heartbeat for
                  3 minutes: prices reach Redis and no browser. With the task stopped neither
                  metric exists and the expression is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_budgets as budgets
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from core.emf import METRICS_NAMESPACE

HEARTBEAT_METRIC = "Heartbeats"
LAST_TICK_AGE_METRIC = "LastTickAgeSeconds"
MARKET_TICK_AGE_METRIC = "MarketTickAgeSeconds"
TICKS_METRIC = "Ticks"
BRIDGE_HEARTBEAT_METRIC = "BridgeHeartbeats"
STREAMER_DIMENSIONS = {"service": "streamer"}
RELAY_DIMENSIONS = {"service": "relay"}
# Ticks arrive every second or so for any liquid key in the session; a minute without one
# (three minutes running) is an outage, not a quiet instrument.
MARKET_TICK_AGE_LIMIT_SECONDS = 60
ONE_MINUTE = Duration.minutes(1)
FIVE_MINUTES = Duration.minutes(5)


class Monitoring(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        service: ecs.FargateService,
        cluster: ecs.ICluster,
        fanout: lambda_.Function,
        schedule: lambda_.Function,
        websocket_functions: Sequence[lambda_.Function],
        http_api: apigwv2.HttpApi,
        websocket_api: apigwv2.WebSocketApi,
        websocket_stage: apigwv2.WebSocketStage,
        cache_cluster_id: str,
        alarm_email: str,
        monthly_budget_usd: float,
        extra_alarms: Sequence[cloudwatch.Alarm] = (),
    ) -> None:
        """`extra_alarms`: alarms other constructs own (e.g. the fan-out's failed events);
        they notify the same topic and show on the dashboard."""
        super().__init__(scope, construct_id)
        self.topic = sns.Topic(self, "Alarms", display_name="LTP alarms", enforce_ssl=True)
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        action = cw_actions.SnsAction(self.topic)

        heartbeats = cloudwatch.Metric(
            namespace=METRICS_NAMESPACE,
            metric_name=HEARTBEAT_METRIC,
            dimensions_map=STREAMER_DIMENSIONS,
            statistic="Sum",
            period=ONE_MINUTE,
        )
        running_tasks = cloudwatch.Metric(
            namespace="ECS/ContainerInsights",
            metric_name="RunningTaskCount",
            dimensions_map={
                "ClusterName": cluster.cluster_name,
                "ServiceName": service.service_name,
            },
            statistic="Maximum",
            period=ONE_MINUTE,
        )
        stale = cloudwatch.MathExpression(
            expression="IF(running > 0 AND FILL(beats, 0) < 1, 1, 0)",
            using_metrics={"running": running_tasks, "beats": heartbeats},
            label="streamer running without heartbeat",
            period=ONE_MINUTE,
        )
        market_tick_age = cloudwatch.Metric(
            namespace=METRICS_NAMESPACE,
            metric_name=MARKET_TICK_AGE_METRIC,
            dimensions_map=STREAMER_DIMENSIONS,
            statistic="Maximum",
            period=ONE_MINUTE,
        )
        bridge_heartbeats = cloudwatch.Metric(
            namespace=METRICS_NAMESPACE,
            metric_name=BRIDGE_HEARTBEAT_METRIC,
            dimensions_map=RELAY_DIMENSIONS,
            statistic="Sum",
            period=ONE_MINUTE,
        )
        bridge_silent = cloudwatch.MathExpression(
            expression="IF(FILL(beats, 0) > 0 AND FILL(bridge, 0) < 1, 1, 0)",
            using_metrics={"beats": heartbeats, "bridge": bridge_heartbeats},
            label="streamer beating without bridge heartbeat",
            period=ONE_MINUTE,
        )
        api_5xx = http_api.metric_server_error(period=FIVE_MINUTES, statistic="Sum")
        ws_errors = cloudwatch.MathExpression(
            expression=" + ".join(f"FILL(e{i}, 0)" for i in range(len(websocket_functions))),
            using_metrics={
                f"e{i}": fn.metric_errors(period=FIVE_MINUTES, statistic="Sum")
                for i, fn in enumerate(websocket_functions)
            },
            label="WebSocket handler errors",
            period=FIVE_MINUTES,
        )
        cache_memory = cloudwatch.Metric(
            namespace="AWS/ElastiCache",
            metric_name="DatabaseMemoryUsagePercentage",
            dimensions_map={"CacheClusterId": cache_cluster_id},
            statistic="Maximum",
            period=FIVE_MINUTES,
        )

        def alarm(
            construct_id: str,
            metric: cloudwatch.IMetric,
            *,
            threshold: float,
            periods: int,
            description: str,
        ) -> cloudwatch.Alarm:
            created = cloudwatch.Alarm(
                self,
                construct_id,
                metric=metric,
                threshold=threshold,
                evaluation_periods=periods,
                datapoints_to_alarm=periods,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                alarm_description=description,
            )
            created.add_alarm_action(action)
            created.add_ok_action(action)
            return created

        self.stale_heartbeat = alarm(
            "StaleHeartbeat", stale, threshold=1, periods=3,
            description="The streamer task runs but wrote no heartbeat for 3 minutes.",
        )
        self.market_tick_age = alarm(
            "MarketTickAge", market_tick_age, threshold=MARKET_TICK_AGE_LIMIT_SECONDS, periods=3,
            description="In market hours the newest tick was over a minute old for 3 minutes: "
            "the feed is down or refusing us (see the streamer's heartbeat errors).",
        )
        self.bridge_heartbeat = alarm(
            "BridgeHeartbeat", bridge_silent, threshold=1, periods=3,
            description="The streamer runs but the relay bridge wrote no heartbeat for "
            "3 minutes: prices reach Redis but no browser.",
        )
        self.fanout_errors = alarm(
            "FanoutErrors",
            fanout.metric_errors(period=FIVE_MINUTES, statistic="Sum"),
            threshold=5, periods=1,
            description="Fan-out invocations failed: browsers miss price windows.",
        )
        self.fanout_throttles = alarm(
            "FanoutThrottles",
            fanout.metric_throttles(period=FIVE_MINUTES, statistic="Sum"),
            threshold=10, periods=1,
            description="Fan-out throttled: reserved concurrency too low for shards x windows.",
        )
        self.api_5xx = alarm(
            "Api5xx", api_5xx, threshold=5, periods=1,
            description="The HTTP API answered 5xx.",
        )
        self.websocket_errors = alarm(
            "WebSocketErrors", ws_errors, threshold=5, periods=1,
            description="WebSocket connect/disconnect/message/authorize handlers failed.",
        )
        self.schedule_errors = alarm(
            "ScheduleErrors",
            schedule.metric_errors(period=FIVE_MINUTES, statistic="Sum"),
            threshold=1, periods=1,
            description="The market-hours start/stop failed: the streamer may be off (or on).",
        )
        self.cache_memory = alarm(
            "CacheMemory", cache_memory, threshold=80, periods=3,
            description="ElastiCache memory above 80 %.",
        )
        self.alarms = [
            self.stale_heartbeat,
            self.market_tick_age,
            self.bridge_heartbeat,
            self.fanout_errors,
            self.fanout_throttles,
            self.api_5xx,
            self.websocket_errors,
            self.schedule_errors,
            self.cache_memory,
        ]
        for extra in extra_alarms:
            extra.add_alarm_action(action)
            extra.add_ok_action(action)
            self.alarms.append(extra)

        def ws_metric(name: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace="AWS/ApiGateway",
                metric_name=name,
                dimensions_map={"ApiId": websocket_api.api_id, "Stage": websocket_stage.stage_name},
                statistic="Sum",
                period=ONE_MINUTE,
            )

        def streamer_metric(name: str, statistic: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace=METRICS_NAMESPACE,
                metric_name=name,
                dimensions_map=STREAMER_DIMENSIONS,
                statistic=statistic,
                period=ONE_MINUTE,
            )

        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", default_interval=Duration.hours(8))
        self.dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(alarms=self.alarms, title="Alarms", width=24, height=3)
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Streamer", width=8,
                left=[heartbeats, running_tasks], right=[streamer_metric(TICKS_METRIC, "Sum")],
            ),
            cloudwatch.GraphWidget(
                title="Tick age (s), bridge heartbeats", width=8,
                left=[streamer_metric(LAST_TICK_AGE_METRIC, "Maximum"), market_tick_age],
                right=[bridge_heartbeats],
            ),
            cloudwatch.GraphWidget(
                title="Cache", width=8,
                left=[cache_memory],
                right=[
                    cloudwatch.Metric(
                        namespace="AWS/ElastiCache",
                        metric_name="EngineCPUUtilization",
                        dimensions_map={"CacheClusterId": cache_cluster_id},
                        statistic="Maximum",
                        period=FIVE_MINUTES,
                    )
                ],
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Fan-out", width=8,
                left=[fanout.metric_invocations(period=ONE_MINUTE),
                      fanout.metric_errors(period=ONE_MINUTE),
                      fanout.metric_throttles(period=ONE_MINUTE)],
                right=[fanout.metric_duration(period=ONE_MINUTE, statistic="p99")],
            ),
            cloudwatch.GraphWidget(
                title="WebSocket API", width=8,
                left=[ws_metric("ConnectCount"), ws_metric("MessageCount")],
                right=[ws_metric("ClientError"), ws_metric("ExecutionError"), ws_errors],
            ),
            cloudwatch.GraphWidget(
                title="HTTP API", width=8,
                left=[http_api.metric_count(period=ONE_MINUTE),
                      http_api.metric_client_error(period=ONE_MINUTE), api_5xx],
                right=[http_api.metric_latency(period=ONE_MINUTE, statistic="p99")],
            ),
        )

        if monthly_budget_usd > 0:
            self.topic.add_to_resource_policy(
                iam.PolicyStatement(
                    actions=["sns:Publish"],
                    principals=[iam.ServicePrincipal("budgets.amazonaws.com")],
                    resources=[self.topic.topic_arn],
                )
            )
            subscribers = [
                budgets.CfnBudget.SubscriberProperty(
                    subscription_type="SNS", address=self.topic.topic_arn
                )
            ]
            budgets.CfnBudget(
                self,
                "Budget",
                budget=budgets.CfnBudget.BudgetDataProperty(
                    budget_type="COST",
                    time_unit="MONTHLY",
                    budget_limit=budgets.CfnBudget.SpendProperty(
                        amount=monthly_budget_usd, unit="USD"
                    ),
                ),
                notifications_with_subscribers=[
                    budgets.CfnBudget.NotificationWithSubscribersProperty(
                        notification=budgets.CfnBudget.NotificationProperty(
                            notification_type=kind,
                            comparison_operator="GREATER_THAN",
                            threshold=threshold,
                            threshold_type="PERCENTAGE",
                        ),
                        subscribers=subscribers,
                    )
                    for kind, threshold in (("ACTUAL", 80), ("FORECASTED", 100))
                ],
            )
