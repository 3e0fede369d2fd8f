from __future__ import annotations

import io
import logging
import sys

import orjson

from streamer.logs import JsonFormatter, Redactor, configure_logging


def test_json_lines_with_extras_and_exceptions() -> None:
    redactor = Redactor()
    redactor.add("super-secret-token")
    record = logging.makeLogRecord({
        "name": "streamer.test", "levelname": "ERROR", "levelno": logging.ERROR,
        "msg": "connect to %s failed", "args": ("wss://x?token=super-secret-token",),
        "connection": 2,
    })
    try:
        raise RuntimeError("boom super-secret-token")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter(redactor).format(record)
    assert "super-secret-token" not in line
    entry = orjson.loads(line)
    assert entry["message"] == "connect to wss://x?token=*** failed"
    assert entry["connection"] == 2
    assert entry["level"] == "ERROR" and entry["logger"] == "streamer.test"
    assert "RuntimeError: boom ***" in entry["exc"]
    assert entry["time"].endswith("Z")


def test_configure_logging_writes_one_line_per_record() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        redactor = configure_logging("INFO", stream=stream)
        redactor.add("tok-12345")
        logging.getLogger("streamer.x").info("hello tok-12345", extra={"n": 1})
        logging.getLogger("streamer.x").debug("hidden")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert orjson.loads(lines[0])["message"] == "hello ***"


def test_short_strings_are_not_masked() -> None:
    redactor = Redactor()
    redactor.add("ab")
    assert redactor("abc") == "abc"
