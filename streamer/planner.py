"""Subscription planning (pure): keys -> feed connections -> request messages.

DhanHQ allows 5 connections per client id, 5,000 instruments per connection and 100
instruments per subscribe message. `assign` spreads the desired keys over connection slots so
that a key stays on its slot while others come and go (a live change never reshuffles what is
already streaming); keys beyond the total capacity, lowest priority first, are rejected (and
reported), never silently dropped.
`diff` and `request_messages` turn "what this connection should carry" vs "what it carries"
into the JSON requests to send, unsubscribes first so freed capacity is usable at once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.instruments import InstrumentKey

MAX_CONNECTIONS = 5
MAX_PER_CONNECTION = 5_000
MAX_PER_MESSAGE = 100

SUBSCRIBE_CODES: dict[str, int] = {"ticker": 15, "quote": 17, "full": 21}
UNSUBSCRIBE_CODES: dict[str, int] = {"ticker": 16, "quote": 18, "full": 22}
DISCONNECT_CODE = 12


@dataclass(frozen=True, slots=True)
class Assignment:
    """Keys per connection slot (index = slot) plus the keys that did not fit."""

    slots: tuple[tuple[InstrumentKey, ...], ...]
    rejected: tuple[InstrumentKey, ...] = ()
    _slot_of: dict[InstrumentKey, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for index, keys in enumerate(self.slots):
            for key in keys:
                self._slot_of[key] = index

    @property
    def slot_of(self) -> Mapping[InstrumentKey, int]:
        return self._slot_of

    @property
    def total(self) -> int:
        return len(self._slot_of)


EMPTY_ASSIGNMENT = Assignment(slots=())


def assign(
    desired: Iterable[InstrumentKey],
    *,
    previous: Assignment | None = None,
    max_connections: int = MAX_CONNECTIONS,
    per_connection: int = MAX_PER_CONNECTION,
) -> Assignment:
    """Place the desired keys on connection slots, in priority order (the order given).

    The first `max_connections * per_connection` keys are carried and the rest rejected, so a
    higher-priority key always wins a place over a lower one, even one already streaming.
    Carried keys that were already placed keep their slot (they are streaming; moving them
    would mean an unsubscribe and a gap); new ones fill the lowest slot with room, so a small
    set uses one connection.
    """
    if max_connections < 1 or per_connection < 1:
        raise ValueError("max_connections and per_connection must be >= 1")
    everything = list(dict.fromkeys(desired))
    capacity = max_connections * per_connection
    ordered, rejected = everything[:capacity], everything[capacity:]
    slots: list[list[InstrumentKey]] = [[] for _ in range(max_connections)]
    placed: set[InstrumentKey] = set()
    before = previous.slot_of if previous is not None else {}
    for key in ordered:
        slot = before.get(key)
        if slot is not None and slot < max_connections and len(slots[slot]) < per_connection:
            slots[slot].append(key)
            placed.add(key)
    room = 0
    for key in ordered:
        if key in placed:
            continue
        while len(slots[room]) >= per_connection:
            room += 1  # never past the last slot: `ordered` fits the capacity
        slots[room].append(key)
    while slots and not slots[-1]:
        slots.pop()
    # Keep each slot in the caller's order, whatever pass placed the key.
    rank = {key: i for i, key in enumerate(ordered)}
    return Assignment(
        slots=tuple(tuple(sorted(keys, key=rank.__getitem__)) for keys in slots),
        rejected=tuple(rejected),
    )


@dataclass(frozen=True, slots=True)
class SubscriptionDiff:
    subscribe: tuple[InstrumentKey, ...]
    unsubscribe: tuple[InstrumentKey, ...]

    def __bool__(self) -> bool:
        return bool(self.subscribe or self.unsubscribe)


def diff(
    desired: Collection[InstrumentKey], current: Collection[InstrumentKey]
) -> SubscriptionDiff:
    """What to send to go from `current` (on the wire) to `desired`."""
    want = desired if isinstance(desired, set | frozenset) else set(desired)
    have = current if isinstance(current, set | frozenset) else set(current)
    return SubscriptionDiff(
        subscribe=tuple(dict.fromkeys(k for k in desired if k not in have)),
        unsubscribe=tuple(dict.fromkeys(k for k in current if k not in want)),
    )


def _chunks(keys: tuple[InstrumentKey, ...], size: int) -> Iterable[tuple[InstrumentKey, ...]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


def request(code: int, keys: Iterable[InstrumentKey]) -> dict[str, Any]:
    items = [{"ExchangeSegment": k.segment, "SecurityId": k.security_id} for k in keys]
    return {"RequestCode": code, "InstrumentCount": len(items), "InstrumentList": items}


def request_messages(
    mode: str,
    changes: SubscriptionDiff,
    *,
    per_message: int = MAX_PER_MESSAGE,
) -> list[dict[str, Any]]:
    """The requests for one connection's changes: unsubscribes first, <= per_message each."""
    if mode not in SUBSCRIBE_CODES:
        raise ValueError(f"unknown feed mode {mode!r}")
    if not 1 <= per_message <= MAX_PER_MESSAGE:
        raise ValueError(f"per_message must be 1..{MAX_PER_MESSAGE}")
    unsub, sub = UNSUBSCRIBE_CODES[mode], SUBSCRIBE_CODES[mode]
    messages = [request(unsub, c) for c in _chunks(changes.unsubscribe, per_message)]
    messages += [request(sub, c) for c in _chunks(changes.subscribe, per_message)]
    return messages


def disconnect_request() -> dict[str, Any]:
    return {"RequestCode": DISCONNECT_CODE}


def encode(message: dict[str, Any]) -> str:
    """Requests travel as JSON text frames."""
    return orjson.dumps(message).decode()
