from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.instruments import InstrumentKey
from streamer.planner import (
    Assignment,
    SubscriptionDiff,
    assign,
    diff,
    disconnect_request,
    encode,
    request_messages,
)


def keys(n: int, start: int = 1, segment: str = "NSE_EQ") -> list[InstrumentKey]:
    return [InstrumentKey(segment, str(i)) for i in range(start, start + n)]


def test_small_set_uses_one_connection_in_the_given_order() -> None:
    wanted = keys(3)
    plan = assign(wanted)
    assert plan.slots == (tuple(wanted),)
    assert plan.rejected == ()
    assert plan.total == 3


def test_no_keys_means_no_connections() -> None:
    assert assign([]).slots == ()


def test_fills_five_connections_of_five_thousand_and_rejects_the_rest() -> None:
    wanted = keys(25_010)
    plan = assign(wanted)
    assert [len(s) for s in plan.slots] == [5_000] * 5
    assert plan.rejected == tuple(wanted[25_000:])
    assert len(plan.slot_of) == 25_000


def test_duplicates_fold() -> None:
    k = keys(2)
    assert assign([k[0], k[1], k[0]]).slots == ((k[0], k[1]),)


def test_limits_are_configurable() -> None:
    plan = assign(keys(7), max_connections=2, per_connection=3)
    assert [len(s) for s in plan.slots] == [3, 3]
    assert len(plan.rejected) == 1
    with pytest.raises(ValueError):
        assign(keys(1), max_connections=0)


def test_a_key_keeps_its_connection_when_others_come_and_go() -> None:
    first = assign(keys(10), per_connection=4)
    assert [len(s) for s in first.slots] == [4, 4, 2]
    # Remove two keys of slot 0 and add three new ones.
    gone = {first.slots[0][0], first.slots[0][1]}
    wanted = [k for k in keys(10) if k not in gone] + keys(3, start=100)
    second = assign(wanted, previous=first, per_connection=4)
    for key, slot in first.slot_of.items():
        if key not in gone:
            assert second.slot_of[key] == slot
    # New keys fill the freed room first.
    assert [second.slot_of[k] for k in keys(3, start=100)] == [0, 0, 2]


def test_priority_order_wins_when_full_even_over_streaming_keys() -> None:
    first = assign(keys(4), max_connections=1, per_connection=4)
    second = assign(keys(2, start=50) + keys(4), previous=first, max_connections=1,
                    per_connection=4)
    assert set(second.slots[0]) == set(keys(2, start=50) + keys(2))
    assert second.rejected == tuple(keys(2, start=3))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 60), max_size=80),
    st.lists(st.integers(1, 60), max_size=80),
)
def test_assignment_invariants(before: list[int], after: list[int]) -> None:
    first = assign([InstrumentKey("NSE_EQ", str(i)) for i in before], max_connections=3,
                   per_connection=7)
    wanted = [InstrumentKey("NSE_EQ", str(i)) for i in after]
    second = assign(wanted, previous=first, max_connections=3, per_connection=7)
    placed = [k for slot in second.slots for k in slot]
    assert len(placed) == len(set(placed))
    assert set(placed) | set(second.rejected) == set(wanted)
    assert all(len(slot) <= 7 for slot in second.slots)
    assert len(second.slots) <= 3
    for key, slot in first.slot_of.items():
        if key in second.slot_of:
            assert second.slot_of[key] == slot


def test_diff_keeps_order_and_skips_what_is_already_there() -> None:
    a, b, c, d = keys(4)
    change = diff([a, b, c], [b, d])
    assert change == SubscriptionDiff(subscribe=(a, c), unsubscribe=(d,))
    assert not diff([a], [a])


@pytest.mark.parametrize(("mode", "sub", "unsub"), [("ticker", 15, 16), ("quote", 17, 18),
                                                     ("full", 21, 22)])
def test_request_codes_per_mode(mode: str, sub: int, unsub: int) -> None:
    a, b = keys(2)
    messages = request_messages(mode, SubscriptionDiff(subscribe=(a,), unsubscribe=(b,)))
    assert [m["RequestCode"] for m in messages] == [unsub, sub]


def test_messages_never_carry_more_than_100_instruments() -> None:
    wanted = keys(5_000, segment="NSE_FNO")
    messages = request_messages("quote", diff(wanted, []))
    assert len(messages) == 50
    assert all(m["InstrumentCount"] == len(m["InstrumentList"]) <= 100 for m in messages)
    sent = [InstrumentKey(i["ExchangeSegment"], i["SecurityId"])
            for m in messages for i in m["InstrumentList"]]
    assert sent == wanted
    odd = request_messages("ticker", diff(keys(250), []))
    assert [m["InstrumentCount"] for m in odd] == [100, 100, 50]
    with pytest.raises(ValueError):
        request_messages("quote", diff(keys(1), []), per_message=101)
    with pytest.raises(ValueError):
        request_messages("depth", diff(keys(1), []))


def test_wire_format_matches_dhan() -> None:
    message = request_messages("quote", diff([InstrumentKey("NSE_EQ", "1333")], []))[0]
    assert orjson.loads(encode(message)) == {
        "RequestCode": 17,
        "InstrumentCount": 1,
        "InstrumentList": [{"ExchangeSegment": "NSE_EQ", "SecurityId": "1333"}],
    }
    assert encode(disconnect_request()) == '{"RequestCode":12}'


def test_assignment_equality_ignores_the_index() -> None:
    assert assign(keys(2)) == Assignment(slots=(tuple(keys(2)),))
