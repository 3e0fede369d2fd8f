"""`SimConfig`: the knobs of a `FeedSimulator`, checked once when it is built.

Apart from the server so the sender (`sender`) and the server (`feed`) share one definition
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from local.dhan_sim.protocol import MAX_CONNECTIONS, MAX_PER_CONNECTION, Mode


@dataclass(frozen=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 0
    client_id: str = "1000000001"
    access_token: str = "sim-token"
    rate: float = 200.0  # price packets per second per connection; 0 = as fast as possible
    packets_per_frame: int = 1
    # None streams each instrument in the mode it was subscribed in (as Dhan does); a mode
    # forces every instrument into that packet type whatever was asked (a benchmark knob).
    mode_default: Mode | None = None
    seed: int = 0
    max_ticks: int | None = None  # price packets per connection, then silence
    max_connections: int = MAX_CONNECTIONS
    max_instruments: int = MAX_PER_CONNECTION
    oi_probability: float = 0.1
    ping_interval: float | None = 10.0  # Dhan pings every 10 s ...
    ping_timeout: float | None = 40.0  # ... and drops a client silent for 40 s
    close_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.packets_per_frame < 1:
            raise ValueError("packets_per_frame must be at least 1")
        if self.rate < 0:
            raise ValueError("rate must be >= 0 (0 = as fast as possible)")
