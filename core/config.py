"""Reading settings from the environment, once, with clear errors and masked secrets.

Each deployable has its own settings module built on `Env`; nothing else reads `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    value: str

    def __repr__(self) -> str:
        return "Secret('**********')" if self.value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.value)


class Env:
    """Typed access to a mapping of environment variables (os.environ by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def text(self, name: str, default: str = "") -> str:
        return self._environ.get(name, default).strip() or default

    def secret(self, name: str, *, blank_is_error: bool = False) -> Secret:
        """A secret value; with `blank_is_error`, a variable that is set but blank (or only
        whitespace) is a configuration error rather than "no secret". Without it, such a
        variable reads as an empty Secret and `is_blank` tells it apart from an absent one
        (for settings that refuse requests over it rather than refusing to start)."""
        raw = self._environ.get(name)
        if raw is None:
            return Secret("")
        value = raw.strip()
        if not value and blank_is_error:
            raise ConfigError(f"{name} is set but blank: give the value or unset it")
        return Secret(value)

    def is_blank(self, name: str) -> bool:
        """True when the variable is set but empty or only whitespace (absent is not blank)."""
        raw = self._environ.get(name)
        return raw is not None and not raw.strip()

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float | None = None) -> float:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self._environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in {"1", "true", "yes", "on"}:
            return True
        if raw in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_FEED_URL = "wss://api-feed.dhan.co"
DEFAULT_API_BASE_URL = "https://api.dhan.co/v2"
WS_MODES = ("ticker", "quote", "full")
