"""The Fargate image without Docker: what `streamer/Dockerfile` copies and installs runs both
container commands.

The build is replayed from the parsed Dockerfile, step by step: each COPY puts the build
context's files (the repository root, filtered by `.dockerignore`) into a temporary root laid out
like the image, and each RUN that installs (pip) runs there, in a fresh virtualenv standing in
for the image's Python. The commands of the task's containers (from the CDK code, checked against
the synthesized template) then run in that root with the template's environment and local
stand-ins: no PYTHONPATH, no repository on `sys.path`, so a package the Dockerfile forgot to COPY
or a dependency it forgot to install fails here.

Not reproduced: the base image. The virtualenv is made by the interpreter running the tests,
whose version may differ from the image's `python:3.12-slim`, and the pip that runs the
Dockerfile's `pip` commands is this interpreter's when it can drive the virtualenv; the RUN steps
that do not install Python packages (`useradd`) are skipped; pip reuses this machine's cache (the
image builds with PIP_NO_CACHE_DIR) so that a second run downloads nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from infra.stack import DOCKERFILE
from infra.streamer_service import BRIDGE_COMMAND, STREAMER_COMMAND
from tests.infra.dockerfile import (
    Copy,
    Dockerfile,
    DockerIgnore,
    Run,
    UnsupportedError,
    copied_files,
    parse,
)
from tests.infra.helpers import REPO_ROOT, Synthesized

# A cold pip cache downloads the whole dependency set (about 60 MB of wheels) before the first test.
pytestmark = [pytest.mark.cdk, pytest.mark.timeout(600)]

PIP = ("pip", "pip3")
PYTHON = ("python", "python3")
FILE_COMMANDS = ("mkdir", "touch", "rm", "cp", "mv")
# What a host's environment may carry that would point the replayed build somewhere else.
BUILD_ENV_DROPPED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV",
                     "PIP_NO_CACHE_DIR", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_USER",
                     "PIP_REQUIREMENT")  # fmt: skip
STOP_WITHIN_SECONDS = 10.0  # the task's SIGTERM budget (STOPSIGNAL, ECS stopTimeout 30 s)


@dataclass(frozen=True)
class Image:
    root: Path  # the image's `/`
    workdir: Path  # its WORKDIR inside `root`
    venv: Path
    env: dict[str, str]  # the Dockerfile's ENV
    pip: tuple[str, ...]  # how `pip` runs for the image's interpreter

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        (found,) = self.venv.glob("lib/python*/site-packages")
        return found


def in_root(root: Path, path: PurePosixPath) -> Path:
    return root / path.relative_to("/")


def is_install(command: list[str]) -> bool:
    return command[0] in PIP or (command[0] in PYTHON and command[1:3] == ["-m", "pip"])


def argv_for(command: list[str], image: Image, cwd: Path) -> list[str]:
    """The replayed RUN command; only the few programs an install step needs, on relative paths."""
    program, *args = command
    root = image.root.resolve()
    if program in PIP:
        return [*image.pip, *args]
    if program in PYTHON:
        return [*image.pip, *args[2:]] if is_install(command) else [str(image.python), *args]
    if program in FILE_COMMANDS:
        for arg in args:
            if not arg.startswith("-") and not (cwd / arg).resolve().is_relative_to(root):
                raise UnsupportedError(f"{program} {arg}: outside the image's root")
        found = shutil.which(program)
        assert found, f"{program} is not on this machine's PATH"
        return [found, *args]
    raise UnsupportedError(f"{program} in an install step: the replay cannot run it here")


def build_env(image: Image) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in BUILD_ENV_DROPPED}
    env.update(image.env)
    env.pop("PIP_NO_CACHE_DIR", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PATH"] = f"{image.venv / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
    return env


def new_virtualenv(venv: Path) -> tuple[str, ...]:
    """A virtualenv of this interpreter, and the pip command that installs into it.

    This interpreter's pip drives the new one (`pip --python`, pip >= 22.3) when it can: that
    skips bundling a pip into each virtualenv (5 s) and keeps pip itself out of the measured
    site-packages (the image's pip comes with its base image, not with the project).
    """
    try:
        major, minor = (int(part) for part in metadata.version("pip").split(".")[:2])
    except metadata.PackageNotFoundError:
        major, minor = 0, 0
    python = venv / "bin" / "python"
    if (major, minor) >= (22, 3):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        return (sys.executable, "-m", "pip", "--python", str(python))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return (str(python), "-m", "pip")


def replay(
    dockerfile: Dockerfile, *, context: Path, root: Path,
    venv: tuple[Path, tuple[str, ...]] | None = None,
) -> Image:  # fmt: skip
    """Run the Dockerfile's COPY and install steps in `root`, in a new virtualenv unless given
    one (its directory and pip command)."""
    ignore = DockerIgnore.of_context(context)
    if venv is None:
        venv = root / "venv", new_virtualenv(root / "venv")
    image = Image(root=root, workdir=in_root(root, dockerfile.workdir), venv=venv[0],
                  env=dict(dockerfile.env), pip=venv[1])  # fmt: skip
    env = build_env(image)
    for step in dockerfile.steps:
        if isinstance(step, Copy):
            for source, target in copied_files(step, context, ignore):
                destination = in_root(root, target)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination, follow_symlinks=False)
            continue
        commands = step.commands()
        if not any(is_install(command) for command in commands):
            continue  # useradd and the like: nothing the commands import
        cwd = in_root(root, step.workdir)
        cwd.mkdir(parents=True, exist_ok=True)
        for command in commands:
            done = subprocess.run(argv_for(command, image, cwd), cwd=cwd, env=env,
                                  capture_output=True, text=True)  # fmt: skip
            assert done.returncode == 0, (
                f"RUN {step.script}\n  {' '.join(command)} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
    return image


def without_step(dockerfile: Dockerfile, step: Run | Copy) -> Dockerfile:
    return replace(dockerfile, steps=tuple(s for s in dockerfile.steps if s is not step))


def size_mb(directory: Path) -> float:
    total = sum(p.lstat().st_size for p in directory.rglob("*") if not p.is_dir())
    return total / 1e6


# --- the image's environment ------------------------------------------------------------------


def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, so nobody else takes it, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    yield from closed_port()


@pytest.fixture(scope="module")
def feed_port() -> Iterator[int]:
    yield from closed_port()


@pytest.fixture(scope="module")
def aws_port() -> Iterator[int]:
    yield from closed_port()


@pytest.fixture(scope="module")
def local_values(redis_port: int, feed_port: int) -> dict[str, str]:
    """Stand-ins for what the template resolves in AWS (endpoints, secrets, function names)."""
    return {
        # TLS as in AWS (infra/cache.py); the port refuses the connection before any handshake.
        "REDIS_URL": f"rediss://127.0.0.1:{redis_port}/0",
        "REDIS_AUTH_TOKEN": "local-auth-token",
        "DHAN_FEED_URL": f"ws://127.0.0.1:{feed_port}/",
        "DHAN_CLIENT_ID": "1000000001",
        "DHAN_ACCESS_TOKEN": "local-access-token",
        "FANOUT_FUNCTION_NAME": "ltp-fanout",
    }


def aws_stand_in(port: int) -> dict[str, str]:
    # What Fargate gives a task, pointed at a closed loopback port: no AWS call can leave.
    return {
        "AWS_REGION": "ap-south-1",
        "AWS_DEFAULT_REGION": "ap-south-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def task_containers(synthesized: Synthesized) -> list[dict[str, Any]]:
    (task,) = synthesized.of_type("AWS::ECS::TaskDefinition")
    containers: list[dict[str, Any]] = task["Properties"]["ContainerDefinitions"]
    return containers


def container_settings(container: Mapping[str, Any], local: Mapping[str, str]) -> dict[str, str]:
    """The container's environment and secrets from the template, local values where AWS resolves
    them. DHAN_SECRET_ARN is left out: reading it needs Secrets Manager, and ECS injects the same
    secret's fields as DHAN_CLIENT_ID and DHAN_ACCESS_TOKEN anyway."""
    settings: dict[str, str] = {}
    given = [(e["Name"], e["Value"]) for e in container.get("Environment", [])]
    given += [(s["Name"], None) for s in container.get("Secrets", [])]
    for name, value in given:
        if name == "DHAN_SECRET_ARN":
            continue
        if name in local:
            settings[name] = local[name]
        elif isinstance(value, str):
            settings[name] = value
        else:
            pytest.fail(f"{container['Name']}: {name} ({value}) needs a local stand-in")
    # Defaults that would reach the internet (the DhanHQ feed) are pinned to loopback too.
    return {**settings, "DHAN_FEED_URL": local["DHAN_FEED_URL"]}


@dataclass(frozen=True)
class Container:
    name: str
    command: list[str]
    settings: dict[str, str]


@pytest.fixture(scope="module")
def containers(
    synthesized: Synthesized, local_values: dict[str, str], aws_port: int
) -> dict[str, Container]:
    found = {}
    for container in task_containers(synthesized):
        settings = {**aws_stand_in(aws_port), **container_settings(container, local_values)}
        found[container["Name"]] = Container(container["Name"], container["Command"], settings)
    return found


def container_for(containers: Mapping[str, Container], command: list[str]) -> Container:
    (found,) = [c for c in containers.values() if c.command == command]
    return found


def start(
    image: Image, command: list[str], settings: Mapping[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """The container command in the image's WORKDIR, with only the image's and the task's
    environment: nothing from this machine or the repository checkout."""
    env = {
        "PATH": f"{image.venv / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
        "HOME": str(image.root / "home"),
        "LANG": "C.UTF-8",
        **image.env,
        **settings,
    }
    program = shutil.which(command[0], path=env["PATH"])
    assert program and Path(program).parent == image.venv / "bin", program
    with log.open("wb") as out:
        return subprocess.Popen([program, *command[1:]], cwd=image.workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)  # fmt: skip


def finish(process: subprocess.Popen[bytes], log: Path, timeout: float) -> tuple[int, str]:
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"still running after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
    return code, log.read_text()


# --- the image --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse((REPO_ROOT / DOCKERFILE).read_text())


@pytest.fixture(scope="module")
def image(dockerfile: Dockerfile, tmp_path_factory: pytest.TempPathFactory) -> Image:
    started = time.monotonic()
    built = replay(dockerfile, context=REPO_ROOT, root=tmp_path_factory.mktemp("image"))
    print(f"\nimage replayed in {time.monotonic() - started:.1f} s")
    return built


def test_the_task_runs_the_infra_commands_in_one_image(
    synthesized: Synthesized, dockerfile: Dockerfile
) -> None:
    containers = task_containers(synthesized)
    commands = sorted(c["Command"] for c in containers)
    assert commands == sorted([STREAMER_COMMAND, BRIDGE_COMMAND])
    assert len({str(c["Image"]) for c in containers}) == 1
    # The image's own default is one of the task's commands (what `docker run` starts).
    assert list(dockerfile.cmd) in commands


def test_the_image_holds_its_own_code_and_not_the_checkout(image: Image) -> None:
    left_out = sorted(p.parent.name for p in REPO_ROOT.glob("*/__init__.py")
                      if not (image.workdir / p.parent.name).exists())  # fmt: skip
    assert left_out, "every package of the repository is in the image?"
    # The same isolation the container commands get: only the image's root and virtualenv.
    probe = (f"import importlib.util as u, sys; print(sys.path); "
             f"print([u.find_spec(name) for name in {left_out!r}])")  # fmt: skip
    process = start(image, ["python", "-c", probe], {}, image.root / "probe.log")
    code, out = finish(process, image.root / "probe.log", 30)
    assert code == 0, out
    assert str(REPO_ROOT) not in out
    assert out.splitlines()[-1] == repr([None] * len(left_out)), left_out


def test_the_dependencies_installed_size(image: Image, record_property: Any) -> None:
    megabytes = size_mb(image.site_packages)
    biggest = sorted(((size_mb(p), p.name) for p in image.site_packages.iterdir() if p.is_dir()),
                     reverse=True)[:8]  # fmt: skip
    record_property("site_packages_mb", round(megabytes, 1))
    print(f"\nthe image's site-packages: {megabytes:.1f} MB "
          f"(Python {sys.version_info.major}.{sys.version_info.minor} here); largest: "
          + ", ".join(f"{name} {mb:.1f}" for mb, name in biggest))  # fmt: skip
    assert megabytes > 0


def test_the_streamer_rejects_a_bad_setting(
    image: Image, containers: dict[str, Container], tmp_path: Path
) -> None:
    streamer = container_for(containers, STREAMER_COMMAND)
    log = tmp_path / "streamer.log"
    process = start(image, streamer.command, {**streamer.settings, "DHANHQ_WS_MODE": "bogus"}, log)
    code, out = finish(process, log, 30)
    assert code == 2, out  # the streamer's exit code for bad configuration
    assert "DHANHQ_WS_MODE" in out


def test_the_bridge_rejects_a_missing_fanout_function(
    image: Image, containers: dict[str, Container], tmp_path: Path
) -> None:
    bridge = container_for(containers, BRIDGE_COMMAND)
    settings = {k: v for k, v in bridge.settings.items() if k != "FANOUT_FUNCTION_NAME"}
    log = tmp_path / "bridge.log"
    code, out = finish(start(image, bridge.command, settings, log), log, 30)
    assert code == 2, out  # bad configuration, as the streamer says it
    assert "FANOUT_FUNCTION_NAME" in out.strip().splitlines()[-1], out


@pytest.mark.parametrize("command", [STREAMER_COMMAND, BRIDGE_COMMAND], ids=["streamer", "bridge"])
def test_each_command_starts_with_the_task_settings_and_stops_on_sigterm(
    image: Image, containers: dict[str, Container], redis_port: int, command: list[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    container = container_for(containers, command)
    log = tmp_path / f"{container.name}.log"
    process = start(image, command, container.settings, log)
    # Trying the configured Redis (closed port) shows the settings were read and accepted.
    deadline = time.monotonic() + 30
    while str(redis_port) not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            finish(process, log, 0.1)
            pytest.fail(f"{container.name} never tried Redis:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    assert process.poll() is None, log.read_text()
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code, out = finish(process, log, STOP_WITHIN_SECONDS)
    assert code == 0, out
    assert time.monotonic() - started < STOP_WITHIN_SECONDS


def test_a_package_the_dockerfile_does_not_copy_fails_the_import(
    dockerfile: Dockerfile, image: Image, containers: dict[str, Container],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:  # fmt: skip
    """Drop the COPY of a package the streamer imports; the same replay must then fail.

    The installed dependencies are reused (as Docker reuses the dependency layer): the virtualenv
    is a hard-linked clone of the image's, and the replay's own `pip install` steps replace the
    project's files in it, so only the dropped package goes missing.
    """
    own = STREAMER_COMMAND[STREAMER_COMMAND.index("-m") + 1].partition(".")[0]
    victim = next(s for s in dockerfile.steps if isinstance(s, Copy) and any(
        (REPO_ROOT / src / "__init__.py").is_file() and src.strip("/") != own
        for src in s.sources))  # fmt: skip
    missing = next(src.strip("/") for src in victim.sources)
    root = tmp_path_factory.mktemp("image-without-" + missing)
    venv = root / "venv"
    shutil.copytree(image.venv, venv, symlinks=True, copy_function=os.link)
    pip = tuple(str(venv / Path(a).relative_to(image.venv)) if a.startswith(str(image.venv))
                else a for a in image.pip)  # fmt: skip
    broken = replay(without_step(dockerfile, victim), context=REPO_ROOT, root=root,
                    venv=(venv, pip))  # fmt: skip
    assert not (broken.site_packages / missing).exists()

    streamer = container_for(containers, STREAMER_COMMAND)
    log = root / "streamer.log"
    code, out = finish(start(broken, STREAMER_COMMAND, streamer.settings, log), log, 30)
    assert code != 0
    assert f"No module named '{missing}'" in out


def test_the_parser_reads_what_the_replay_needs_and_refuses_the_rest(tmp_path: Path) -> None:
    parsed = parse(
        "FROM python:3.12-slim\n"
        'ENV A=1 \\\n    B="two words"\n'
        "WORKDIR /srv\nWORKDIR app\n"
        "# a comment\n"
        'COPY ["pyproject.toml", "./"]\n'
        "COPY pkg/ pkg/\n"
        "RUN pip install . && rm -rf build\n"
        'CMD ["python", "-m", "pkg"]\n'
    )
    assert parsed.env == {"A": "1", "B": "two words"}
    assert parsed.workdir == PurePosixPath("/srv/app")
    assert parsed.cmd == ("python", "-m", "pkg")
    first, second, run = parsed.steps
    assert isinstance(first, Copy) and first.destination == PurePosixPath("/srv/app")
    assert isinstance(second, Copy) and isinstance(run, Run)
    assert run.commands() == [["pip", "install", "."], ["rm", "-rf", "build"]]
    with pytest.raises(UnsupportedError):
        Run("pip install . | tee log", PurePosixPath("/")).commands()
    for text in ("FROM a\nFROM b\n", "FROM a\nADD x /x\n", "FROM a\nCOPY --from=b /x /x\n"):
        with pytest.raises(UnsupportedError):
            parse(text)

    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").touch()
    (tmp_path / "pkg" / "__pycache__" / "x.pyc").touch()
    (tmp_path / "tests").mkdir()
    ignore = DockerIgnore.parse("*\n!pkg/\n!pyproject.toml\n**/__pycache__\n")
    copied = [str(target) for _, target in copied_files(second, tmp_path, ignore)]
    assert copied == ["/srv/app/pkg/__init__.py"]
    assert ignore.excludes("tests/x.py") and not ignore.excludes("pyproject.toml")
    with pytest.raises(FileNotFoundError):
        copied_files(first, tmp_path, ignore)  # in .dockerignore's list, not in the context
