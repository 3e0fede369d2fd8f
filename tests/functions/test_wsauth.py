"""Connect tokens (`functions.wsauth`): one minute, one purpose, one address.

(Format, tampering and the basic round trip are in test_ws_protocol.py.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
import pytest

from functions.wsauth import (
    CONNECT_PURPOSE,
    CONNECT_TTL_SECONDS,
    Claims,
    TokenError,
    mint_token,
    normal_ip,
    verify_token,
)

SECRET = "wsauth-test-secret"
T0 = 1_800_000_000


def reason(token: str, *, now: float, source_ip: str | None = None) -> str:
    with pytest.raises(TokenError) as caught:
        verify_token(token, SECRET, now=now, source_ip=source_ip)
    return caught.value.reason


def signed(claims: dict[str, object]) -> str:
    """A correctly signed token with arbitrary claims (what a holder of the key could mint)."""
    body = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    mac = hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).digest()
    return f"{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def test_a_connect_token_lives_one_minute_and_not_a_second_more() -> None:
    assert CONNECT_TTL_SECONDS == 60
    token = mint_token(SECRET, now=T0, source_ip="203.0.113.7")
    claims = verify_token(token, SECRET, now=T0 + 60, source_ip="203.0.113.7")
    assert claims == Claims(subject="browser", issued_at=T0, expires_at=T0 + 60,
                            source_ip="203.0.113.7", purpose=CONNECT_PURPOSE)  # fmt: skip
    assert reason(token, now=T0 + 61, source_ip="203.0.113.7") == "token expired"
    # A little clock drift on `iat` is tolerated, a token from the future is not.
    assert verify_token(token, SECRET, now=T0 - 5, source_ip="203.0.113.7")
    assert reason(token, now=T0 - 6, source_ip="203.0.113.7") == "token issued in the future"


def test_a_bound_token_opens_from_its_address_only() -> None:
    token = mint_token(SECRET, subject="ip:203.0.113.7", now=T0, source_ip="203.0.113.7")
    assert verify_token(token, SECRET, now=T0, source_ip=" 203.0.113.7 ").subject == (
        "ip:203.0.113.7")
    for elsewhere in ("198.51.100.1", "203.0.113.70", "", None):
        assert reason(token, now=T0, source_ip=elsewhere) == "token bound to another address"


def test_addresses_compare_in_one_spelling() -> None:
    token = mint_token(SECRET, now=T0, source_ip="2001:DB8:0:0::1")
    assert verify_token(token, SECRET, now=T0, source_ip="2001:db8::1").source_ip == "2001:db8::1"
    assert normal_ip("::ffff:203.0.113.7") == "203.0.113.7"
    mapped = mint_token(SECRET, now=T0, source_ip="::ffff:203.0.113.7")
    assert verify_token(mapped, SECRET, now=T0, source_ip="203.0.113.7")
    assert normal_ip(" ") is None and normal_ip(None) is None
    assert normal_ip("not-an-ip") == "not-an-ip"


def test_an_unbound_token_is_accepted_from_anywhere() -> None:
    # What the local run mints into config.json (its page and gateway share one host).
    token = mint_token(SECRET, subject="ltp-local", now=T0)
    for address in ("127.0.0.1", "198.51.100.1", None):
        assert verify_token(token, SECRET, now=T0, source_ip=address).source_ip is None
    # A blank address binds to nothing (rather than to "no address").
    assert mint_token(SECRET, subject="ltp-local", now=T0, source_ip="  ") == token


def test_a_token_serves_one_purpose() -> None:
    other = mint_token(SECRET, now=T0, purpose="api-read")
    assert reason(other, now=T0) == "wrong purpose"
    assert verify_token(other, SECRET, now=T0, purpose="api-read").purpose == "api-read"
    # Tokens of before the `use` claim (the 10-minute ones) open nothing.
    legacy = signed({"sub": "browser", "iat": T0, "exp": T0 + 600})
    assert reason(legacy, now=T0) == "wrong purpose"


@pytest.mark.parametrize("claims", [
    {"sub": "b", "iat": T0, "exp": T0 + 60, "use": 7},
    {"sub": "b", "iat": T0, "exp": True, "use": CONNECT_PURPOSE},
    {"sub": "b", "iat": T0, "exp": T0 + 60, "use": CONNECT_PURPOSE, "ip": 7},
    {"sub": "b", "iat": T0, "exp": T0 + 60, "use": CONNECT_PURPOSE, "ip": ""},
])  # fmt: skip
def test_signed_but_ill_typed_claims_are_refused(claims: dict[str, object]) -> None:
    assert reason(signed(claims), now=T0) in {"malformed token", "wrong purpose"}


def test_blank_keys_and_lifetimes_are_refused() -> None:
    for blank in ("", "  ", "\t"):
        with pytest.raises(ValueError, match="non-blank secret"):
            mint_token(blank)
        with pytest.raises(ValueError, match="non-blank secret"):
            verify_token("a.b", blank)
    with pytest.raises(ValueError, match="at least one second"):
        mint_token(SECRET, ttl_seconds=0)
