"""Errors of the instrument-master load.

FunctionsError (functions.errors)
 +-- InstrumentLoadError   every attempt to download and load the master failed (the last
                           failure is its cause); the master loaded before is still in place

Configuration errors (`core.errors.ConfigError`: a bad INSTRUMENT_SEGMENTS, a blank Redis
token) and Redis errors are not translated: the invocation fails with them, which is what the
errors alarm counts.
"""

from __future__ import annotations

from functions.errors import FunctionsError


class InstrumentLoadError(FunctionsError):
    """The scrip master could not be loaded; Redis keeps the previous one."""
