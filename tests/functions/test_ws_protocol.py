"""Pure parts of the WebSocket path: client message parsing, tokens, fan-out planning."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from functions.ws.protocol import ProtocolError, parse_client_message, rate_limited_message
from functions.ws.settings import RealtimeSettings
from functions.ws.wiring import connection_limits, message_rate
from functions.wsauth import TokenError, mint_token, verify_token
from realtime.delivery import build_messages, index_window, pack_messages, route
from realtime.registry import ConnectionLimits, MessageRate
from realtime.views import ShardView
from tests.realtime_support import update


def test_subscribe_keys_are_canonical_and_deduplicated() -> None:
    action = parse_client_message('{"action":"subscribe","keys":[" NSE_EQ:01333","NSE_EQ:1333"]}')
    assert action.action == "subscribe"
    assert action.keys == ("NSE_EQ:1333",)


@pytest.mark.parametrize("body", [None, "", b"", "{", "null", "1", '"ping"', '{"action": 5}',
                                  '{"action":"subscribe","keys":[]}',
                                  '{"action":"subscribe","keys":[null]}',
                                  '{"action":"subscribe","keys":{"a":1}}'])
def test_anything_malformed_is_a_protocol_error(body: str | bytes | None) -> None:
    with pytest.raises(ProtocolError):
        parse_client_message(body)


def test_over_limit_and_oversized_are_refused_before_parsing_keys() -> None:
    keys = [f"NSE_EQ:{i}" for i in range(11)]
    with pytest.raises(ProtocolError, match="at most 10 keys"):
        parse_client_message(orjson.dumps({"action": "subscribe", "keys": keys}), max_keys=10)
    with pytest.raises(ProtocolError, match="too large"):
        parse_client_message("x" * 2000, max_bytes=1024)


def test_the_default_key_cap_is_the_pages_500_rows() -> None:
    keys = [f"NSE_EQ:{i}" for i in range(501)]
    assert len(parse_client_message(orjson.dumps({"action": "subscribe",
                                                  "keys": keys[:500]})).keys) == 500
    with pytest.raises(ProtocolError, match="at most 500 keys") as over:
        parse_client_message(orjson.dumps({"action": "subscribe", "keys": keys}))
    assert over.value.details == {"code": "too_many_keys"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("[" * 2000 + "]" * 2000, "invalid JSON (depth limit exceeded)"),
        ('{"action": ' + "[" * 1020 + "]" * 1020 + "}", "unknown action 'a JSON array'"),
        ('{"action": ' + '{"a":' * 1020 + "1" + "}" * 1020 + "}",
         "unknown action 'a JSON object'"),
        ('{"action": "subscribe", "keys": [' + "[" * 1020 + "]" * 1020 + "]}", "invalid keys"),
        ('{"action": "' + "x" * 5000 + '"}', "unknown action '" + "x" * 40 + "'"),
    ],
)
def test_deep_or_long_values_are_refused_without_being_echoed(body: str, reason: str) -> None:
    """Python's repr of a value nested ~1,000 deep raises RecursionError (a 500 from the
    handler): reasons name a nested value by its type and cut strings short."""
    with pytest.raises(ProtocolError) as refused:
        parse_client_message(body)
    assert refused.value.reason.startswith(reason)
    assert len(orjson.dumps([refused.value.reason, refused.value.details])) < 300


def test_the_admission_defaults_are_productions() -> None:
    realtime = RealtimeSettings.from_env({})
    assert realtime.max_keys == 500
    assert connection_limits(realtime) == ConnectionLimits(total=20_000, per_source_ip=20)
    assert message_rate(realtime) == MessageRate(per_second=5.0, burst=20, strikes=3)
    off = RealtimeSettings.from_env({"WS_MAX_CONNECTIONS": "0", "WS_MAX_CONNECTIONS_PER_IP": "0",
                                     "WS_MESSAGE_RATE": "0"})
    assert connection_limits(off) == ConnectionLimits() and message_rate(off) is None
    tuned = RealtimeSettings.from_env({"WS_MESSAGE_RATE": "0.5", "WS_MESSAGE_BURST": "4",
                                       "WS_ABUSE_STRIKES": "5"})
    assert message_rate(tuned) == MessageRate(per_second=0.5, burst=4, strikes=5)
    # A client that waits out its penalty always finds a token again.
    assert MessageRate(per_second=0.5).penalty_ms == 2000 and MessageRate().penalty_ms == 1000


def test_the_rate_limited_error_says_when_to_retry() -> None:
    message = rate_limited_message(1000, per_second=5.0, burst=20)
    assert message["type"] == "error" and message["code"] == "rate_limited"
    assert message["retry_after_ms"] == 1000
    assert "at most 5 per second (bursts of 20)" in message["reason"]


def test_tokens_round_trip_and_resist_tampering() -> None:
    token = mint_token("s3cret", subject="alice", ttl_seconds=60, now=1000)
    claims = verify_token(token, "s3cret", now=1030)
    assert (claims.subject, claims.issued_at, claims.expires_at) == ("alice", 1000, 1060)
    body, sig = token.split(".")
    forged_body = mint_token("s3cret", subject="mallory", now=1000).split(".")[0]
    cases = {
        "bad signature": [f"{forged_body}.{sig}", mint_token("other", now=1000)],
        "malformed token": ["abc", "a.b.c", f"{body}.{sig}x" * 300, "é.é"],
        "missing token": ["", None],
    }
    for reason, tokens in cases.items():
        for bad in tokens:
            with pytest.raises(TokenError) as caught:
                verify_token(bad, "s3cret", now=1030)
            assert caught.value.reason == reason
    with pytest.raises(TokenError, match="expired"):
        verify_token(token, "s3cret", now=1060 + 31)
    with pytest.raises(ValueError):
        mint_token("")


def test_the_window_keeps_the_newest_valid_update_per_key() -> None:
    window = index_window([update("A:1", 5, 1.0), update("A:1", 4, 0.5), update("B:1", 1, 2.0),
                           {"key": "C:1", "version": "x"}, update("D:1", 2, 4.0)])
    assert window["A:1"]["version"] == 5 and "C:1" not in window
    assert sorted(window) == ["A:1", "B:1", "D:1"]


def test_messages_split_only_past_the_limit() -> None:
    updates = [update(f"NSE_EQ:{i}", 1, 100.0) for i in range(300)]
    (single,) = build_messages(updates[:10], timestamp="t", max_bytes=32 * 1024)
    assert len(orjson.loads(single)["updates"]) == 10
    parts = build_messages(updates, timestamp="t", max_bytes=4096)
    assert all(len(p) <= 4096 for p in parts)
    assert [u for p in parts for u in orjson.loads(p)["updates"]] == updates


_UPDATES = st.lists(
    st.builds(update, st.from_regex(r"NSE_EQ:[0-9]{1,6}", fullmatch=True),
              st.integers(0, 2**62), st.floats(0.05, 1e6, allow_nan=False)),
    max_size=60)


@given(updates=_UPDATES, limit=st.integers(200, 5000))
def test_messages_are_the_envelope_orjson_would_write_and_split_exactly_at_the_limit(
    updates: list[dict[str, object]], limit: int
) -> None:
    parts = build_messages(updates, timestamp="2026-11-26T09:15:00.000Z", max_bytes=limit)
    # The fan-out packs updates it encoded once per window: the same bytes.
    assert pack_messages([orjson.dumps(u) for u in updates],
                         timestamp="2026-11-26T09:15:00.000Z", max_bytes=limit) == parts
    whole = orjson.dumps({"type": "screener_ltp_batch_update",
                          "timestamp": "2026-11-26T09:15:00.000Z", "source": "websocket",
                          "updates": updates})
    if len(whole) <= limit:
        assert parts == [whole]
    else:
        assert len(parts) == 1 if len(updates) == 1 else len(parts) > 1
        assert all(len(p) <= limit or len(orjson.loads(p)["updates"]) == 1 for p in parts)
        # Greedy: the first update of every later part would not have fitted the previous one.
        for before, after in zip(parts, parts[1:], strict=False):
            first = orjson.dumps(orjson.loads(after)["updates"][0])
            assert len(before) + 1 + len(first) > limit
    assert [u for p in parts for u in orjson.loads(p)["updates"]] == updates


KEY_POOL = [f"K:{i}" for i in range(12)]


@given(
    subscriptions=st.dictionaries(
        st.sampled_from([f"c{i}" for i in range(6)]),
        st.dictionaries(st.sampled_from(KEY_POOL), st.integers(0, 30), max_size=8),
        max_size=6),
    steps=st.lists(st.dictionaries(st.sampled_from(KEY_POOL), st.integers(1, 5), max_size=12),
                   max_size=6),
)
def test_routing_sends_each_connection_its_fresh_keys_above_their_floors(
    subscriptions: dict[str, dict[str, int]], steps: list[dict[str, int]]
) -> None:
    """Windows of rising versions (as the shard's claims let through): every connection gets
    exactly its keys' updates that are newer than its snapshot floor, window after window,
    although `route` forgets a floor as soon as a version passed it."""
    view = ShardView.from_floors(subscriptions)
    keys, floors = view.keys, view.floors
    current = dict.fromkeys(KEY_POOL, 0)
    for step in steps:
        window = {}
        for key, rise in step.items():
            current[key] += rise
            window[key] = update(key, current[key], 1.0)
        encoded = {key: orjson.dumps(u) for key, u in window.items()}
        routed = route(window, encoded, keys, floors)
        expected = {
            cid: sorted(encoded[k] for k, floor in wanted.items()
                        if k in window and window[k]["version"] > floor)
            for cid, wanted in subscriptions.items()}
        assert {cid: sorted(items) for cid, items in routed.items()} == {
            cid: items for cid, items in expected.items() if items}
