"""core.liveness: the file a container's loop touches and the health check that reads its age."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import liveness

NOW = 1_795_666_500.0


def aged(path: Path, seconds: float) -> Path:
    path.touch()
    os.utime(path, (NOW - seconds, NOW - seconds))
    return path


def test_a_recent_file_is_alive_and_an_old_or_missing_one_is_not(tmp_path: Path) -> None:
    alive = tmp_path / "alive"
    assert liveness.check(aged(alive, 89), 90, now=NOW) is None
    assert liveness.check(aged(alive, 90), 90, now=NOW) is None
    assert liveness.check(aged(alive, 91), 90, now=NOW) == (
        f"{alive} last touched 91 s ago, more than 90 s")
    assert liveness.check(tmp_path / "never", 90, now=NOW) == f"{tmp_path / 'never'} does not exist"


def test_touch_creates_and_refreshes_the_file(tmp_path: Path) -> None:
    alive = aged(tmp_path / "alive", 3600)
    assert liveness.check(alive, 90) is not None
    assert liveness.touch(alive)
    assert liveness.check(alive, 90) is None
    fresh = tmp_path / "new"
    assert liveness.touch(fresh) and liveness.check(fresh, 90) is None


def test_touch_reports_failure_instead_of_raising(tmp_path: Path) -> None:
    assert liveness.touch(tmp_path / "no-such-dir" / "alive") is False
    (tmp_path / "a-dir").mkdir()
    assert liveness.check(tmp_path / "a-dir" / "x" / "y", 90) is not None


def test_the_path_comes_from_liveness_file_or_the_default() -> None:
    assert liveness.path_from_env("/tmp/streamer.alive", {}) == Path("/tmp/streamer.alive")
    assert liveness.path_from_env("/tmp/streamer.alive", {"LIVENESS_FILE": " /run/x "}) == (
        Path("/run/x"))


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [(["FRESH", "90"], 0, ""), (["OLD", "90"], 1, "more than 90 s"),
     (["MISSING", "90"], 1, "does not exist"), (["FRESH"], 1, "usage"),
     (["FRESH", "soon"], 1, "must be a number")],
)  # fmt: skip
def test_main_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    fresh = tmp_path / "fresh"
    fresh.touch()
    old = tmp_path / "old"
    old.touch()
    os.utime(old, (1_000_000.0, 1_000_000.0))
    paths = {"FRESH": str(fresh), "OLD": str(old), "MISSING": str(tmp_path / "missing")}
    assert liveness.main([paths.get(a, a) for a in args]) == code
    assert message in capsys.readouterr().err


def test_python_dash_m_is_the_health_check_command(tmp_path: Path) -> None:
    alive = tmp_path / "alive"
    alive.touch()
    command = [sys.executable, "-m", "core.liveness", str(alive), "90"]
    assert subprocess.run(command, capture_output=True).returncode == 0
    os.utime(alive, (1_000_000.0, 1_000_000.0))
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 1
    assert "more than 90 s" in done.stderr
