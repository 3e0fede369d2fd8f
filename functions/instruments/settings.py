"""Settings of the instrument-master load, beyond `functions.settings` (which has REDIS_*).

Read once from the environment through `core.config.Env`.

| variable | default | meaning |
|---|---|---|
| INSTRUMENT_MASTER_URL | Dhan's compact scrip master | CSV to load (an http(s) URL or a path) |
| INSTRUMENT_SEGMENTS | NSE_EQ,BSE_EQ,IDX_I,NSE_FNO | feed segments to keep; `all` = every one |
| INSTRUMENT_LOAD_ATTEMPTS | 3 | downloads tried before the invocation fails |
| INSTRUMENT_RETRY_BASE_SECONDS | 5.0 | first pause between attempts (then doubled, jittered) |

Why not every segment by default: Dhan's full master is tens of MB, most of its rows
derivatives and currency contracts of every exchange; each row becomes fields of three hashes,
and while a load swaps them the old and the new copy exist side by side, so loading every
segment could fill a cache.t4g.micro (0.5 GiB) that also holds the prices, the streams and the
connection registry. The default keeps the equities, the indices and NSE's F&O; `all` (or more
segments) wants a larger node (`ltp:cacheNodeType`).

The URL should not carry credentials: it is logged and reported with its user info and query
string removed, but it is also written as is into `instruments:meta`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from core.config import Env
from core.errors import ConfigError
from core.instrument_master import DEFAULT_MASTER_URL
from core.instruments import SEGMENT_CODES, split_keys

DEFAULT_SEGMENTS = ("NSE_EQ", "BSE_EQ", "IDX_I", "NSE_FNO")
ALL_SEGMENTS = "all"


@dataclass(frozen=True, slots=True)
class InstrumentSettings:
    master_url: str = DEFAULT_MASTER_URL
    # None keeps every segment.
    segments: frozenset[str] | None = frozenset(DEFAULT_SEGMENTS)
    attempts: int = 3
    retry_base_seconds: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InstrumentSettings:
        env = Env(environ)
        return cls(
            master_url=env.text("INSTRUMENT_MASTER_URL", DEFAULT_MASTER_URL),
            segments=parse_segments(env.text("INSTRUMENT_SEGMENTS", ",".join(DEFAULT_SEGMENTS))),
            attempts=env.integer("INSTRUMENT_LOAD_ATTEMPTS", 3, minimum=1),
            retry_base_seconds=env.number("INSTRUMENT_RETRY_BASE_SECONDS", 5.0, minimum=0.0),
        )

    @property
    def shown_source(self) -> str:
        return shown_source(self.master_url)


def parse_segments(text: str) -> frozenset[str] | None:
    """`NSE_EQ,IDX_I` -> those feed segments; `all` -> None (no filter)."""
    if text.strip().lower() == ALL_SEGMENTS:
        return None
    wanted = frozenset(s.upper() for s in split_keys(text))
    unknown = sorted(wanted - set(SEGMENT_CODES))
    if unknown or not wanted:
        raise ConfigError(
            f"INSTRUMENT_SEGMENTS must be '{ALL_SEGMENTS}' or feed segments out of "
            f"{' '.join(SEGMENT_CODES)}; got {', '.join(unknown) or 'none'}"
        )
    return wanted


def shown_source(source: str) -> str:
    """A source as it may be logged: an URL without user info, query string or fragment."""
    parts = urlsplit(source)
    if parts.scheme not in ("http", "https"):
        return source
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
