from __future__ import annotations

import pytest

from streamer.failures import Action, Failure, Kind, classify


@pytest.mark.parametrize(
    ("failure", "action"),
    [
        (Failure(Kind.DISCONNECT, 806), Action.STOP),
        (Failure(Kind.DISCONNECT, 808), Action.RECHECK),
        (Failure(Kind.DISCONNECT, 809), Action.RECHECK),
        (Failure(Kind.DISCONNECT, 810), Action.STOP),
        (Failure(Kind.DISCONNECT, 807), Action.REAUTH),
        (Failure(Kind.DISCONNECT, 805), Action.BACKOFF_LONG),
        (Failure(Kind.DISCONNECT, 800), Action.RETRY),
        (Failure(Kind.DISCONNECT, 814), Action.RETRY),
        (Failure(Kind.DISCONNECT, 999), Action.RETRY),
        (Failure(Kind.HANDSHAKE, 429), Action.BACKOFF_LONG),
        (Failure(Kind.HANDSHAKE, 401), Action.REAUTH),
        (Failure(Kind.HANDSHAKE, 403), Action.REAUTH),
        (Failure(Kind.HANDSHAKE, 500), Action.RETRY),
        (Failure(Kind.HANDSHAKE, 503), Action.RETRY),
        (Failure(Kind.HANDSHAKE, 404), Action.RETRY),
        (Failure(Kind.CLOSED, detail="1006"), Action.RETRY),
        (Failure(Kind.SILENCE), Action.RETRY),
        (Failure(Kind.NETWORK, detail="connection refused"), Action.RETRY),
        (Failure(Kind.OTHER), Action.RETRY),
        (Failure(Kind.CONFIG, detail="bad URL"), Action.STOP),
    ],
)
def test_classification_table(failure: Failure, action: Action) -> None:
    assert classify(failure).action is action


def test_messages_name_the_reason() -> None:
    verdict = classify(Failure(Kind.DISCONNECT, 809))
    assert verdict.message == "feed disconnect 809 (access token invalid) -> recheck"
    assert classify(Failure(Kind.DISCONNECT, 806)).message == (
        "feed disconnect 806 (data APIs not subscribed) -> stop")
    assert Failure(Kind.HANDSHAKE, 429, "slow down").describe() == (
        "handshake refused with HTTP 429: slow down"
    )
    assert Failure(Kind.SILENCE).describe() == "silence"
    assert "unknown reason" in Failure(Kind.DISCONNECT, 1).describe()
