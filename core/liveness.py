"""Container liveness by file age: a long-lived process touches a file from its main loop, and
the ECS container health check asks whether that file is recent.

    python -m core.liveness PATH MAX_AGE_SECONDS      exit 0: touched within MAX_AGE seconds
                                                      exit 1: missing, too old, or unreadable

The file says the process's event loop still turns (the streamer touches it after every
heartbeat attempt, the relay bridge at each of its heartbeats), not that its dependencies are
up: a task whose Redis is unreachable is alive and restarting it would not help, while a hung
or wedged loop stops touching the file and ECS replaces the task. The health route and the
alarms report the dependencies.

The one piece of file I/O in `core/`: both containers need the same two halves (touch, check)
and the check runs in the image with nothing but the standard library and this module.
`LIVENESS_FILE` names the file (each container has its own default); `touch` never raises,
so a read-only or full disk cannot fail the loop that calls it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from core.config import Env

LIVENESS_FILE_ENV = "LIVENESS_FILE"
STREAMER_LIVENESS_FILE = "/tmp/streamer.alive"
RELAY_LIVENESS_FILE = "/tmp/relay.alive"
# ECS checks every 30 s; a loop touching every 10 s misses several beats before this.
DEFAULT_MAX_AGE_SECONDS = 90.0

EXIT_ALIVE = 0
EXIT_DEAD = 1


def path_from_env(default: str, environ: Mapping[str, str] | None = None) -> Path:
    """The liveness file: `LIVENESS_FILE`, else the container's default."""
    return Path(Env(environ).text(LIVENESS_FILE_ENV, default))


def touch(path: Path) -> bool:
    """Set the file's modification time to now (creating it); False when that failed."""
    try:
        path.touch()
    except OSError:
        return False
    return True


def check(path: Path, max_age: float, *, now: float | None = None) -> str | None:
    """None when `path` was modified at most `max_age` seconds before `now`; else the reason."""
    try:
        modified = path.stat().st_mtime
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror or exc}"
    age = (time.time() if now is None else now) - modified
    if age > max_age:
        return f"{path} last touched {age:.0f} s ago, more than {max_age:g} s"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m core.liveness PATH MAX_AGE_SECONDS", file=sys.stderr)
        return EXIT_DEAD
    try:
        max_age = float(args[1])
    except ValueError:
        print(f"MAX_AGE_SECONDS must be a number, got {args[1]!r}", file=sys.stderr)
        return EXIT_DEAD
    problem = check(Path(args[0]), max_age)
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_DEAD
    return EXIT_ALIVE


if __name__ == "__main__":
    raise SystemExit(main())
