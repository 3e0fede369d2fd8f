"""Signed, short-lived, single-purpose WebSocket connect tokens (the `$connect` authorizer
checks them).

Format: `base64url(claims JSON) "." base64url(HMAC-SHA256(secret, base64url(claims JSON)))`,
no padding. Claims:

| claim | meaning |
|---|---|
| `sub` | who: the OIDC subject (identity mode a), `ip:<addr>` or `browser` (public mode b) |
| `iat`, `exp` | epoch seconds; a connect token lives `CONNECT_TTL_SECONDS` (60 s) by default |
| `use` | what the token is for; only `ws-connect` opens a WebSocket, so a token minted for any
|        | other purpose with the same key can never be replayed as a connect token |
| `ip` | the source address the token was minted for (the HTTP API event's `sourceIp`); when
|      | present, a connect from any other address is refused |

Browsers cannot set headers on a WebSocket, so the token travels as `?token=...`: it shows in
URLs and logs. A leaked one is worth little: it opens connections for one minute, from the
address it was minted for only. The page fetches a fresh one before every connect
(`GET /api/v1/ws_token`); the local run mints unbound ones into `config.json`.

Expiry has no leeway: minter and authorizer are Lambda functions whose clocks AWS keeps in
sync (to well under a second), and a 61-second-old token must be refused. An `iat` in the
future gets a few seconds of leeway for the same clocks' residual drift.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass
from typing import Any

import orjson

CONNECT_TTL_SECONDS = 60
CONNECT_PURPOSE = "ws-connect"
# See the module docstring: an expired token is expired, a future `iat` may be clock drift.
FUTURE_LEEWAY_SECONDS = 5
MAX_TOKEN_LENGTH = 2048


class TokenError(Exception):
    """The token is missing, malformed, forged, expired, for another purpose or bound to
    another address; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    subject: str
    issued_at: int
    expires_at: int
    source_ip: str | None = None
    purpose: str = CONNECT_PURPOSE


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("malformed token") from exc


def _sign(secret: str, body: str) -> str:
    return _b64encode(hmac.new(secret.encode(), body.encode("ascii"), hashlib.sha256).digest())


def _check_secret(secret: str) -> None:
    # A blank key would sign tokens anyone can forge; it is a configuration error, never a key.
    if not secret or not secret.strip():
        raise ValueError("a token needs a non-blank secret")


def normal_ip(address: str | None) -> str | None:
    """One spelling per address (`2001:DB8:0::1` is `2001:db8::1`, an IPv4-mapped IPv6
    address is its IPv4 one), None for none."""
    if address is None or not address.strip():
        return None
    text = address.strip()
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        return text
    mapped = parsed.ipv4_mapped if isinstance(parsed, ipaddress.IPv6Address) else None
    return (mapped or parsed).compressed


def mint_token(
    secret: str,
    *,
    subject: str = "browser",
    ttl_seconds: int = CONNECT_TTL_SECONDS,
    now: float | None = None,
    source_ip: str | None = None,
    purpose: str = CONNECT_PURPOSE,
) -> str:
    """A token for `purpose`, valid `ttl_seconds` from `now`, bound to `source_ip` if given."""
    _check_secret(secret)
    if ttl_seconds < 1:
        raise ValueError("a token must live at least one second")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": subject, "iat": issued, "exp": issued + ttl_seconds,
                              "use": purpose}  # fmt: skip
    bound = normal_ip(source_ip)
    if bound is not None:
        claims["ip"] = bound
    body = _b64encode(orjson.dumps(claims))
    return f"{body}.{_sign(secret, body)}"


def verify_token(
    token: str | None,
    secret: str,
    *,
    now: float | None = None,
    source_ip: str | None = None,
    purpose: str = CONNECT_PURPOSE,
) -> Claims:
    """The token's claims, or TokenError. Constant-time signature comparison.

    A token that names an address is accepted only from that address: `source_ip` is where
    the connect comes from (the authorizer event's `requestContext.identity.sourceIp`); an
    unknown one (None) does not match either.
    """
    _check_secret(secret)
    if not token:
        raise TokenError("missing token")
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise TokenError("malformed token")
    body, signature = token.split(".")
    try:
        body.encode("ascii")
        signature.encode("ascii")
    except UnicodeEncodeError:
        raise TokenError("malformed token") from None
    if not hmac.compare_digest(_sign(secret, body), signature):
        raise TokenError("bad signature")
    claims = _claims(body)
    if claims.purpose != purpose:
        raise TokenError("wrong purpose")
    current = time.time() if now is None else now
    if claims.expires_at < current:
        raise TokenError("token expired")
    if claims.issued_at - FUTURE_LEEWAY_SECONDS > current:
        raise TokenError("token issued in the future")
    if claims.source_ip is not None and claims.source_ip != normal_ip(source_ip):
        raise TokenError("token bound to another address")
    return claims


def _claims(body: str) -> Claims:
    try:
        document: Any = orjson.loads(_b64decode(body))
    except orjson.JSONDecodeError as exc:
        raise TokenError("malformed token") from exc
    if not isinstance(document, dict):
        raise TokenError("malformed token")
    sub, iat, exp = document.get("sub"), document.get("iat"), document.get("exp")
    use, ip = document.get("use"), document.get("ip")
    if not isinstance(sub, str) or not isinstance(iat, int) or not isinstance(exp, int) \
            or isinstance(iat, bool) or isinstance(exp, bool):
        raise TokenError("malformed token")
    if not isinstance(use, str):
        # Tokens of before `use` existed (and anything else without one) open nothing.
        raise TokenError("wrong purpose")
    if ip is not None and (not isinstance(ip, str) or not ip):
        raise TokenError("malformed token")
    return Claims(subject=sub, issued_at=iat, expires_at=exp, source_ip=ip, purpose=use)
