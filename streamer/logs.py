"""JSON-lines logging for the streamer, with secrets scrubbed from every line.

One line per record: time, level, logger, message, any `extra=` fields, and the exception text.
Every registered secret (the DhanHQ token, including ones re-read after an 807) is replaced by
`***` in the final line, so even a library's exception text carrying a URL cannot leak it.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
MASK = "***"


class Redactor:
    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, secret: str) -> None:
        if len(secret) >= 4:  # masking a 1-3 char string would mangle ordinary text
            self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redact = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ).replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return self._redact(line)


def configure_logging(level: str = "INFO", *, stream: IO[str] | None = None) -> Redactor:
    """Route the root logger to JSON lines on stderr; returns the redactor to feed secrets."""
    redactor = Redactor()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # websockets logs every frame at DEBUG; keep its INFO+ only.
    logging.getLogger("websockets").setLevel(max(logging.INFO, root.level))
    return redactor
