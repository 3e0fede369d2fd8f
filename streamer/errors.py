"""Errors of the streamer.

StreamerError
 +-- CredentialsError     DhanHQ client id / token missing or unreadable (env or Secrets Manager)
 +-- FeedError            one feed connection failed; carries the classified `Failure`
 |    +-- FatalFeedError  the feed refused us for good (806/808/809/810): that connection stops
 +-- SinkError            Redis could not take a batch (the batch is kept and retried)
 +-- LeaseLostError       another instance took the single-writer lease we held

Configuration problems are `core.errors.ConfigError`. Third-party errors (websockets, redis,
botocore) are translated into these at the module that talks to the library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.failures import Failure


class StreamerError(Exception):
    """Base of every error raised by `streamer`."""


class CredentialsError(StreamerError):
    """The DhanHQ credentials cannot be found or read."""


class FeedError(StreamerError):
    """A feed connection ended; `failure` says how, for `failures.classify`."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


class FatalFeedError(FeedError):
    """The feed will not serve this connection again without an operator's help."""


class SinkError(StreamerError):
    """A Redis batch failed."""


class LeaseLostError(StreamerError):
    """The single-writer lease now belongs to another instance: stop writing."""
