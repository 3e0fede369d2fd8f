"""A WebSocket viewer that behaves as the page does (web/js/feed.js), for the deploy-shaped runs.

It connects with a fresh token, subscribes its keys and reads on a thread, recording when each
key's newest update arrived. Like the page, a socket silent for `silence` seconds is probed
with a ping; an `error` with code `reconnect` (the server lost the connection's registration)
makes it reconnect and subscribe again. Every price it is shown is checked against the cache
TTL: a snapshot or update whose version (the streamer's wall clock in microseconds) is older
than that is recorded in `stale`, the invariant "never a stale price shown as fresh".
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

CACHE_TTL_SECONDS = 30
_VERSION_EPOCH_US = 10**15


@dataclass
class Viewer:
    name: str
    ws_url: str
    token: Callable[[], str]
    keys: list[str]
    silence: float = 15.0  # the page's silenceMs
    updates: dict[str, float] = field(default_factory=dict)  # key -> wall time of its newest
    snapshots: int = 0
    reconnects: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    stale: list[tuple[str, str, float]] = field(default_factory=list)  # key, kind, age
    _ws: Any = None
    _socket: contextlib.ExitStack | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _last_data: float = 0.0
    _probed: float = 0.0

    def start(self) -> Viewer:
        self._open()
        self._thread = threading.Thread(target=self._run, name=f"viewer-{self.name}",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._close_socket()

    def fresh_since(self, moment: float, keys: Iterable[str] | None = None) -> bool:
        """Every key (default: all of the viewer's) got an update at or after `moment`."""
        with self._lock:
            return all(self.updates.get(k, 0.0) >= moment for k in keys or self.keys)

    def missing_since(self, moment: float) -> list[str]:
        with self._lock:
            return [k for k in self.keys if self.updates.get(k, 0.0) < moment]

    # --- the socket -----------------------------------------------------------------------

    def _open(self) -> None:
        from websockets.sync.client import connect

        self._socket = contextlib.ExitStack()
        self._ws = self._socket.enter_context(connect(
            f"{self.ws_url}?token={quote(self.token())}", open_timeout=20, close_timeout=2))
        self._last_data = self._probed = time.time()
        self._ws.send(json.dumps({"action": "subscribe", "keys": self.keys}))

    def _close_socket(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            except Exception:  # noqa: BLE001 - a dead socket is what we are leaving
                pass
            self._socket = self._ws = None

    def _reconnect(self) -> None:
        self._close_socket()
        while not self._stop.is_set():
            try:
                self._open()
                self.reconnects += 1
                return
            except Exception:  # noqa: BLE001 - the page backs off and retries
                time.sleep(0.5)

    def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        while not self._stop.is_set():
            try:
                raw = self._ws.recv(timeout=0.5)
            except TimeoutError:
                self._watch()
                continue
            except ConnectionClosed:
                self._reconnect()
                continue
            if self._on(json.loads(raw), time.time()):
                self._reconnect()
            self._watch()

    def _watch(self) -> None:
        now = time.time()
        if now - self._last_data > self.silence and now - self._probed > self.silence:
            self._probed = now
            try:
                self._ws.send(json.dumps({"action": "ping"}))
            except Exception:  # noqa: BLE001 - the next recv reports the closed socket
                pass

    def _on(self, message: dict[str, Any], at: float) -> bool:
        """Record one message; True when the server asked for a reconnect."""
        kind = message.get("type")
        with self._lock:
            if kind == "snapshot":
                self.snapshots += 1
                self._last_data = at
                for key, price in (message.get("prices") or {}).items():
                    self._check(key, price, at, "snapshot")
            elif kind == "screener_ltp_batch_update":
                self._last_data = at
                for update in message.get("updates") or []:
                    self._check(update["key"], update, at, "update")
                    self.updates[update["key"]] = at
            elif kind == "error":
                self.errors.append(message)
                return message.get("code") == "reconnect"
        return False

    def _check(self, key: str, price: dict[str, Any], at: float, kind: str) -> None:
        version = price.get("version")
        if isinstance(version, int) and version >= _VERSION_EPOCH_US:
            age = at - version / 1e6
            if age > CACHE_TTL_SECONDS:
                self.stale.append((key, kind, round(age, 1)))
