"""What the bridge's heartbeat emits besides its status in Redis: one EMF line and a file.

Every beat (`RelayBridge.beat`, every HEARTBEAT_SECONDS from a task of its own, so a quiet
market, whose windows carry nothing, beats like a busy one):
  1. the status (`realtime.contracts.BridgeStatus`) goes to `ws:bridge:heartbeat` (TTL 60 s):
     time (epoch s), windows, invocations, invoke_errors, requeued, reader_errors, ...;
  2. when that write succeeded, one CloudWatch Embedded Metric Format line on stdout,
     namespace `LtpStream` (`core.emf`, the streamer's too), dimension `service=relay`:
       BridgeHeartbeats      Count    1 per beat (the bridge's stale-heartbeat alarm keys on it)
       BridgeWindows         Count    windows closed since the previous line
       BridgeInvocations     Count    fan-out invokes made since the previous line
       BridgeInvokeFailures  Count    of those, the ones that failed (their updates requeued)
       BridgeWindowSeconds   Seconds  the current window length
     As the streamer's, a beat that did not reach Redis is not counted: the bridge cannot do
     its work then, and the counts it did not emit are carried into the next line;
  3. the liveness file is touched (`core.liveness`: LIVENESS_FILE, default `/tmp/relay.alive`,
     whose age the container health check reads), even while Redis is down (replacing the
     task would not bring Redis back, and would stop the streamer beside it), but not while
     the windower has been stuck inside one window for longer than `STALL_SECONDS`. Failing
     to write the file is logged and never ends the bridge.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core import emf, liveness

log = logging.getLogger(__name__)

METRICS_SERVICE = "relay"
HEARTBEAT_METRIC = "BridgeHeartbeats"
DEFAULT_LIVENESS_FILE = liveness.RELAY_LIVENESS_FILE
# A window's Redis calls time out after 10 s and its invokes after 2 x (2 + 5) s: a window
# that has not finished after this long is stuck, not slow.
STALL_SECONDS = 120.0

# status field -> metric name: counters, emitted as the increase since the previous line.
COUNTERS = {
    "windows": "BridgeWindows",
    "invocations": "BridgeInvocations",
    "invoke_errors": "BridgeInvokeFailures",
}


def counters(status: Mapping[str, Any]) -> dict[str, int]:
    return {field: int(status[field]) for field in COUNTERS}


def emf_line(status: Mapping[str, Any], *, previous: Mapping[str, int],
             timestamp_ms: int) -> bytes:
    """One EMF record for a beat; `previous` holds the counters of the last line emitted."""
    metrics: dict[str, tuple[float, str]] = {HEARTBEAT_METRIC: (1, "Count")}
    for field, name in COUNTERS.items():
        metrics[name] = (max(int(status[field]) - previous.get(field, 0), 0), "Count")
    metrics["BridgeWindowSeconds"] = (float(status["window_seconds"]), "Seconds")
    return emf.emf_line(metrics, service=METRICS_SERVICE, timestamp_ms=timestamp_ms,
                        properties={"subscribed": status.get("subscribed")})


def emf_to_stdout(line: bytes) -> None:
    sys.stdout.buffer.write(line)
    sys.stdout.flush()


def discard(line: bytes) -> None:
    """EMF off (the local run): the line goes nowhere."""


def touch(path: str) -> bool:
    """Touch the liveness file; False (and a warning) when that failed."""
    if liveness.touch(Path(path)):
        return True
    log.warning("liveness file %s not written", path)
    return False
