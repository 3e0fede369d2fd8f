"""Errors of the shared domain.

CoreError
 +-- ConfigError          the environment is missing or has a bad value (fail fast at start)
 +-- InvalidKeyError      one instrument key is malformed
 |    +-- InvalidKeysError  several keys were checked; names every bad one
 +-- InstrumentMasterError  a scrip-master CSV cannot be read (missing file, HTTP error, bad header)
 +-- SecretError          a secret named by an ARN cannot be read or has the wrong shape
"""

from __future__ import annotations


class CoreError(Exception):
    """Base of every error raised by `core`."""


class ConfigError(CoreError):
    """A setting is missing or cannot be parsed."""


class InvalidKeyError(CoreError, ValueError):
    """An instrument key is not `SEGMENT:SECURITY_ID`."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid instrument key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class InvalidKeysError(InvalidKeyError):
    """Several keys were invalid; `problems` maps each bad key to its reason."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = dict(problems)
        detail = "; ".join(f"{k!r}: {r}" for k, r in self.problems.items())
        CoreError.__init__(self, f"invalid instrument keys: {detail}")
        first = next(iter(self.problems.items()), ("", ""))
        self.key, self.reason = first


class InstrumentMasterError(CoreError):
    """The instrument master (Dhan's scrip-master CSV) cannot be read or is not in its format."""


class SecretError(CoreError):
    """A secret named by an ARN could not be read, or lacks the expected field."""
