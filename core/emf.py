"""CloudWatch Embedded Metric Format lines, as the long-lived containers print them on stdout
(the awslogs driver ships them; CloudWatch turns each into metrics). One namespace for the
whole system: the Lambdas' powertools metrics, the streamer's and the bridge's heartbeats, and
the alarms on them (infra) all name it from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.messages import dumps

METRICS_NAMESPACE = "LtpStream"


def emf_line(metrics: Mapping[str, tuple[float, str]], *, service: str, timestamp_ms: int,
             properties: Mapping[str, Any] | None = None) -> bytes:
    """One EMF record: `metrics` name -> (value, unit), in order, with dimension `service`;
    `properties` ride along as searchable log fields."""
    record = {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": METRICS_NAMESPACE,
                "Dimensions": [["service"]],
                "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in metrics.items()],
            }],
        },
        "service": service,
        **{name: value for name, (value, _) in metrics.items()},
        **(properties or {}),
    }
    return dumps(record) + b"\n"
