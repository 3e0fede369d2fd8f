"""The task's container health checks run in what `streamer/Dockerfile` puts in the image.

Each container's `HealthCheck.Command` (from the synthesized template) runs in a root holding
only the files the Dockerfile's COPY steps copy, in its WORKDIR, with `python -S` (no
site-packages, no PYTHONPATH) and an empty environment: the check needs the standard library
and the copied code, nothing installed and nothing from the checkout. The full image replay
(`test_image.py`) covers the installed packages; this is the quick half for the check alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra.stack import DOCKERFILE
from tests.infra.dockerfile import Copy, DockerIgnore, copied_files, parse
from tests.infra.helpers import REPO_ROOT, Synthesized

pytestmark = pytest.mark.cdk


def copied_root(root: Path) -> Path:
    """The Dockerfile's COPYs into `root`; returns its WORKDIR there."""
    dockerfile = parse((REPO_ROOT / DOCKERFILE).read_text())
    ignore = DockerIgnore.of_context(REPO_ROOT)
    for step in dockerfile.steps:
        if isinstance(step, Copy):
            for source, target in copied_files(step, REPO_ROOT, ignore):
                destination = root / target.relative_to("/")
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)
    workdir = root / dockerfile.workdir.relative_to("/")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def health_checks(synthesized: Synthesized) -> dict[str, list[str]]:
    (task,) = synthesized.of_type("AWS::ECS::TaskDefinition")
    found: dict[str, list[str]] = {}
    for container in task["Properties"]["ContainerDefinitions"]:
        command: list[Any] = container["HealthCheck"]["Command"]
        assert command[0] == "CMD", "exec form: the image has no shell to rely on"
        found[container["Name"]] = [str(part) for part in command[1:]]
    return found


def run_check(command: list[str], workdir: Path, alive: Path) -> subprocess.CompletedProcess[str]:
    program, *args = command
    assert program == "python"
    # The template names the container's file under /tmp; here a private one stands in.
    args = [str(alive) if a.endswith(".alive") else a for a in args]
    return subprocess.run([sys.executable, "-S", *args], cwd=workdir, env={},
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def test_each_health_check_runs_from_the_copied_code_alone(
    synthesized: Synthesized, tmp_path: Path
) -> None:
    workdir = copied_root(tmp_path / "image")
    checks = health_checks(synthesized)
    assert set(checks) == {"streamer", "bridge"}
    for name, command in checks.items():
        alive = tmp_path / f"{name}.alive"
        missing = run_check(command, workdir, alive)
        assert missing.returncode == 1, missing.stderr
        assert "does not exist" in missing.stderr
        alive.touch()
        fresh = run_check(command, workdir, alive)
        assert fresh.returncode == 0, fresh.stderr
        os.utime(alive, (1_000_000.0, 1_000_000.0))
        old = run_check(command, workdir, alive)
        assert old.returncode == 1 and "more than 90 s" in old.stderr


def test_without_core_in_the_image_the_check_fails(
    synthesized: Synthesized, tmp_path: Path
) -> None:
    workdir = copied_root(tmp_path / "image")
    shutil.rmtree(workdir / "core")
    alive = tmp_path / "alive"
    alive.touch()
    done = run_check(health_checks(synthesized)["streamer"], workdir, alive)
    assert done.returncode == 1
    assert "No module named 'core'" in done.stderr
