"""The simulator on its own loop in a thread, driven from synchronous code."""

from __future__ import annotations

import threading

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from local.dhan_sim import client
from local.dhan_sim.feed import SimConfig
from local.dhan_sim.threaded import ThreadedFeedSimulator
from streamer.decoder import Disconnect, PrevClose, Ticker, decode_frame


def test_sync_clients_stream_and_faults_cross_threads() -> None:
    # Other simulators may run for the whole session (the deploy-shaped test's feed): only
    # this one's thread must be gone afterwards.
    before = {t for t in threading.enumerate() if t.name == "dhan-sim-feed"}
    with ThreadedFeedSimulator(SimConfig(rate=500.0)) as threaded:
        with connect(client.feed_url(threaded.url), compression=None) as ws:
            ws.send(client.subscribe("ticker", [("NSE_EQ", "1333")]))
            first = decode_frame(ws.recv(timeout=5)).packets  # type: ignore[arg-type]
            second = decode_frame(ws.recv(timeout=5)).packets  # type: ignore[arg-type]
            assert isinstance(first[0], PrevClose) and isinstance(second[0], Ticker)
            assert threaded.sim.connection_count == 1

            threaded.call(threaded.sim.send_disconnect, 807)
            reasons = []
            with pytest.raises(ConnectionClosed):
                while True:
                    packets = decode_frame(ws.recv(timeout=5)).packets  # type: ignore[arg-type]
                    reasons += [p.reason for p in packets if isinstance(p, Disconnect)]
            assert reasons == [807]
    assert not any(t.name == "dhan-sim-feed" and t not in before for t in threading.enumerate())


def test_a_failed_start_is_raised_in_the_caller() -> None:
    with ThreadedFeedSimulator() as running:
        taken = SimConfig(port=running.sim.port)
        with pytest.raises(OSError):
            ThreadedFeedSimulator(taken).start()
