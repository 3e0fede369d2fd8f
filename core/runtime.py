"""Garbage-collector settings for the long-lived processes (streamer, bridge, local stack) and
warm Lambda containers.

CPython's default starts a collection every 700 container allocations, and every so often a
full one that walks the whole heap; in a process holding a thousand WebSocket connections
a full collection stopped every thread for 100-160 ms, which is the whole latency budget
of a window (bench/bench_e2e_ws.py reports the pauses). Collections are made rarer, and what
exists after start-up (modules, clients) is moved out of the collector's way with
`gc.freeze()`, as the CPython documentation suggests for long-running servers. Reference
cycles are still collected, only in larger batches.
"""

from __future__ import annotations

import gc

# Young collections every 50,000 allocations (a few windows of fan-out work), the middle one
# every 20 of those, a full one every 20 middle ones (minutes apart).
THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Call once the process is set up: what exists now lives as long as the process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
