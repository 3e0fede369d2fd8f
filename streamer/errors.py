"""Errors of the streamer.

StreamerError
 +-- CredentialsError     DhanHQ client id / token missing or unreadable (env or Secrets Manager)
 +-- SinkError            Redis answered a batch write with something other than success
 +-- LeaseLostError       another instance took the single-writer lease we held

Feed failures are not exceptions: a connection turns whatever ended a session (a websockets
or OS error, a disconnect packet, silence) into a `failures.Failure` value at the boundary, and
its reconnect loop acts on `failures.classify`. Configuration problems are
`core.errors.ConfigError`; Redis errors (`redis.exceptions.RedisError`) are caught where the
sink, key source, lease and heartbeat retry them.
"""

from __future__ import annotations


class StreamerError(Exception):
    """Base of every error raised by `streamer`."""


class CredentialsError(StreamerError):
    """The DhanHQ credentials cannot be found or read."""


class SinkError(StreamerError):
    """A Redis batch write was not applied in full."""


class LeaseLostError(StreamerError):
    """The single-writer lease now belongs to another instance: stop writing."""
