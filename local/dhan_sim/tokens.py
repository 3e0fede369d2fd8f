"""`TokenAuthority`: the simulator's access tokens, issued, renewed and refused the way Dhan does.

Dhan's access tokens are JWTs (`header.payload.signature`, base64url) whose payload carries
`iss: "dhan"`, `dhanClientId`, `tokenConsumerType: "SELF"` and `iat`/`exp` in epoch seconds;
they live 24 h. Only one token is active at a time: renewing (`GET /v2/RenewToken`) or minting
a new one kills the previous, and an open feed using it gets disconnect 807.

One authority is shared by the feed (`feed.FeedSimulator`) and REST (`rest.RestStandIn`) so a
renewal over REST is seen by both. It is pure state behind a lock (no sockets, no event loop):
REST renews from its handler threads, and rotation listeners (`on_rotate`) are called in
whichever thread rotated, after the lock is released, so a listener may call back in.

A token that is not a JWT (the default `"sim-token"`) never expires: the simulator has always
accepted such tokens and tests rely on that. Renewing it works and returns a JWT.
The signature part is random, not a real HMAC: nobody can verify it without Dhan's key anyway,
and randomness makes two tokens minted in the same second differ.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.dhan_token import token_claims, token_expiry
from core.messages import IST
from local.dhan_sim.protocol import AUTH_FAILED, TOKEN_EXPIRED, TOKEN_INVALID

log = logging.getLogger(__name__)

TOKEN_LIFETIME_SECONDS = 86_400.0
_HEADER = {"typ": "JWT", "alg": "HS512"}

RotateListener = Callable[[str, str], None]  # (old token, new token)


@dataclass(frozen=True)
class Issued:
    """A token the authority has just made the active one."""

    token: str
    client_id: str
    expires_at: float  # epoch seconds (the token's `exp`)

    @property
    def expiry_time(self) -> str:
        """`exp` as an ISO string in IST, the time zone Dhan reports times in."""
        return datetime.fromtimestamp(self.expires_at, IST).isoformat()


@dataclass(frozen=True)
class Refused:
    """A renewal the authority turned down, and why (for the error message)."""

    message: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(claims: dict[str, Any]) -> str:
    """A JWT-shaped token with these claims and a random signature."""
    header = _b64url(json.dumps(_HEADER, separators=(",", ":")).encode())
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{header}.{payload}.{secrets.token_urlsafe(64)}"


# What a token says about itself is read as the deployables read it (`core.dhan_token`).
jwt_claims = token_claims
expiry_of = token_expiry


class TokenAuthority:
    """The one active access token of a client id, the dead ones, and who to tell on rotation.

    `token=None` mints a JWT at once; a given token (JWT or plain) is installed as is.
    """

    def __init__(
        self,
        client_id: str = "1000000001",
        token: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        lifetime_seconds: float = TOKEN_LIFETIME_SECONDS,
    ) -> None:
        if lifetime_seconds <= 0:
            raise ValueError("lifetime_seconds must be positive")
        self.client_id = client_id
        self.clock = clock
        self.lifetime_seconds = lifetime_seconds
        self._lock = threading.Lock()
        self._listeners: list[RotateListener] = []
        self._dead: set[str] = set()
        self._current = token if token is not None else self._new_token()
        self._expires_at = expiry_of(self._current)

    # -- observation -------------------------------------------------------------------------
    @property
    def current(self) -> str:
        """The active token (it may have expired by the clock: see `check`)."""
        with self._lock:
            return self._current

    @property
    def expires_at(self) -> float | None:
        """The active token's `exp`, or None when it never expires (a plain token)."""
        with self._lock:
            return self._expires_at

    @property
    def dead_tokens(self) -> frozenset[str]:
        """Tokens rotated away (a snapshot); an expired active token is not among them."""
        with self._lock:
            return frozenset(self._dead)

    def check(self, token: str) -> int | None:
        """None for the active, unexpired token, else the feed's disconnect reason for it."""
        if not token:
            return AUTH_FAILED
        with self._lock:
            if token == self._current:
                return TOKEN_EXPIRED if self._expired() else None
            return TOKEN_EXPIRED if token in self._dead else TOKEN_INVALID

    def is_active(self, token: str) -> bool:
        return self.check(token) is None

    # -- rotation ----------------------------------------------------------------------------
    def on_rotate(self, listener: RotateListener) -> Callable[[], None]:
        """Call `listener(old, new)` after every announced rotation; returns the unsubscriber."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def mint(self) -> Issued:
        """A fresh token becomes the active one, as if generated on web.dhan.co."""
        with self._lock:
            old, issued = self._current, self._issue()
        self._announce(old, issued.token)
        return issued

    def renew(self, token: str, client_id: str) -> Issued | Refused:
        """Dhan's RenewToken: only the active, unexpired token of this client id renews."""
        with self._lock:
            refused = self._refusal(token, client_id)
            if refused is not None:
                return refused
            issued = self._issue()
        self._announce(token, issued.token)
        return issued

    def install(self, token: str, *, announce: bool = True) -> None:
        """Make a given token the active one (the previous dies; a dead one comes back).

        `announce=False` leaves listeners out, for callers that script the consequences
        themselves (`FeedSimulator.set_token` leaves open connections alone).
        """
        with self._lock:
            old = self._current
            if token == old:
                return
            self._replace(token)
        if announce:
            self._announce(old, token)

    # -- under the lock ----------------------------------------------------------------------
    def _expired(self) -> bool:
        return self._expires_at is not None and self.clock() >= self._expires_at

    def _refusal(self, token: str, client_id: str) -> Refused | None:
        if client_id != self.client_id:
            return Refused(f"client id {client_id!r} does not own this token")
        if token != self._current:
            if token in self._dead:
                return Refused("the access token was renewed or replaced; use the new one")
            return Refused("the access token is invalid")
        if self._expired():
            return Refused("the access token has expired; generate a new one")
        return None

    def _issue(self) -> Issued:
        token = self._new_token()
        self._replace(token)
        assert self._expires_at is not None  # a minted token always has an `exp`
        return Issued(token, self.client_id, self._expires_at)

    def _new_token(self) -> str:
        now = self.clock()
        return encode_jwt({
            "iss": "dhan", "partnerId": "", "iat": int(now),
            "exp": int(now + self.lifetime_seconds), "tokenConsumerType": "SELF",
            "webhookUrl": "", "dhanClientId": self.client_id,
        })  # fmt: skip

    def _replace(self, token: str) -> None:
        self._dead.add(self._current)
        self._dead.discard(token)
        self._current = token
        self._expires_at = expiry_of(token)

    # -- outside the lock --------------------------------------------------------------------
    def _announce(self, old: str, new: str) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(old, new)
            except Exception:
                # One broken listener (e.g. a feed whose loop just closed) must not fail the
                # renewal that REST has already committed to.
                log.exception("token rotation listener %r failed", listener)


__all__ = [
    "TOKEN_LIFETIME_SECONDS",
    "Issued",
    "Refused",
    "RotateListener",
    "TokenAuthority",
    "encode_jwt",
    "expiry_of",
    "jwt_claims",
]
