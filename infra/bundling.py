"""Lambda packaging without Docker: pip installs Linux wheels for the Lambda runtime locally.

`pip install --platform manylinux2014_x86_64 --only-binary=:all: --python-version 3.12
--implementation cp --target <asset>` fetches the same wheels a Lambda container would build
with, on any host (macOS, CI without a Docker engine). `dhanhq` goes in with `--no-deps`: its
declared dependency on pandas (about 70 MB, imported only by two helpers we never call) would
not fit the point of a small, fast-starting bundle; `requests` and `websockets`, which it does
import at load, are installed explicitly. boto3 is left to the Lambda runtime.

Versions come from `pyproject.toml` (one source of truth); the asset hash is computed here from
those specifications plus the packaged source files, so that a dependency change redeploys and
an unchanged tree does not.

Bundling is skipped for stacks outside the context `aws:cdk:bundling-stacks` (tests set it to
`[]`); CDK then uses the source folder as a stand-in asset and never calls `try_bundle`.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

REPO_ROOT = Path(__file__).resolve().parent.parent

# What the Lambda functions import at run time (by distribution name, versions from pyproject).
LAMBDA_DEPENDENCIES = (
    "redis",
    "hiredis",  # redis-py's C reply parser, used when installed
    "orjson",
    "fastapi",
    "mangum",
    "aws-lambda-powertools",
    "websockets",
    "httpx",  # core.instrument_master streams the scrip master over HTTP
)
# Installed without their own dependencies (see the module docstring).
NO_DEPS_DEPENDENCIES = ("dhanhq",)
# What dhanhq imports at load time, beside websockets; not a direct dependency of the project.
EXTRA_REQUIREMENTS = ("requests>=2.31,<3",)
PACKAGES = ("core", "realtime", "functions")

PYTHON_VERSION = "3.12"
# manylinux_2_28 too: some projects ship only newer wheels; the Lambda 3.12 image (AL2023,
# glibc 2.34) runs both.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_SKIP_FILES = ("__pycache__", "*.pyc", "*.pyo")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(
    names: Iterable[str], *, pyproject: Path = REPO_ROOT / "pyproject.toml"
) -> list[str]:
    """The pyproject `dependencies` entries of the named distributions, in the given order."""
    declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    by_name: dict[str, str] = {}
    for spec in declared:
        match = _NAME.match(spec)
        if match:
            by_name[_canonical(match.group(1))] = spec.strip()
    missing = [name for name in names if _canonical(name) not in by_name]
    if missing:
        raise ValueError(f"not in pyproject dependencies: {', '.join(missing)}")
    return [by_name[_canonical(name)] for name in names]


@dataclass(frozen=True, slots=True)
class BundlePlan:
    """What goes into the Lambda asset; pure data, so the commands can be checked in tests."""

    source_root: Path
    requirements: tuple[str, ...]
    no_deps_requirements: tuple[str, ...]
    packages: tuple[str, ...] = PACKAGES
    python_version: str = PYTHON_VERSION
    platforms: tuple[str, ...] = PLATFORMS
    pip: tuple[str, ...] = field(default_factory=lambda: (sys.executable, "-m", "pip"))

    def pip_commands(self, output_dir: str) -> list[list[str]]:
        common = [
            *self.pip,
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            "--upgrade",
            "--target",
            output_dir,
            *(arg for platform in self.platforms for arg in ("--platform", platform)),
            "--implementation",
            "cp",
            "--python-version",
            self.python_version,
            "--only-binary=:all:",
        ]
        commands = [[*common, *self.requirements]]
        if self.no_deps_requirements:
            commands.append([*common, "--no-deps", *self.no_deps_requirements])
        return commands

    def source_files(self) -> list[Path]:
        files: list[Path] = []
        for package in self.packages:
            root = self.source_root / package
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    files.append(path)
        return files

    def fingerprint(self) -> str:
        """Changes when a packaged file, a requirement or the target platform changes."""
        digest = hashlib.sha256()
        for item in (*self.requirements, "--no-deps", *self.no_deps_requirements,
                     self.python_version, *self.platforms):
            digest.update(item.encode())
            digest.update(b"\0")
        for path in self.source_files():
            digest.update(path.relative_to(self.source_root).as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
        return digest.hexdigest()

    def copy_packages(self, output_dir: str) -> None:
        for package in self.packages:
            shutil.copytree(
                self.source_root / package,
                Path(output_dir) / package,
                ignore=shutil.ignore_patterns(*_SKIP_FILES),
                dirs_exist_ok=True,
            )


class BundlingError(RuntimeError):
    """pip could not assemble the Lambda asset (offline, or no wheel for the platform)."""


@jsii.implements(ILocalBundling)
class LocalPipBundler:
    """CDK local bundling: runs the plan's pip commands, then copies the project packages."""

    def __init__(self, plan: BundlePlan) -> None:
        self._plan = plan

    def try_bundle(self, output_dir: str, *_options: Any, **_kw_options: Any) -> bool:
        # jsii passes the BundlingOptions struct positionally (the typed protocol says keyword
        # arguments); nothing in it is needed here.
        for command in self._plan.pip_commands(output_dir):
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                # Raising (rather than returning False) keeps CDK from falling back to Docker,
                # which is absent here and would hide pip's actual complaint.
                raise BundlingError(
                    f"pip failed ({done.returncode}) bundling the Lambda asset:\n"
                    f"  {' '.join(command)}\n{done.stderr[-4000:]}"
                )
        # Console scripts are useless in Lambda and carry a host interpreter path.
        shutil.rmtree(Path(output_dir) / "bin", ignore_errors=True)
        self._plan.copy_packages(output_dir)
        return True


def default_plan(source_root: Path = REPO_ROOT) -> BundlePlan:
    return BundlePlan(
        source_root=source_root,
        requirements=(
            *project_requirements(LAMBDA_DEPENDENCIES, pyproject=source_root / "pyproject.toml"),
            *EXTRA_REQUIREMENTS,
        ),
        no_deps_requirements=tuple(
            project_requirements(NO_DEPS_DEPENDENCIES, pyproject=source_root / "pyproject.toml")
        ),
    )


def lambda_code(plan: BundlePlan | None = None) -> lambda_.Code:
    """One asset for every function (they share `core`, `realtime` and `functions`)."""
    plan = plan or default_plan()
    return lambda_.Code.from_asset(
        str(plan.source_root),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=plan.fingerprint(),
        bundling=BundlingOptions(
            # Never pulled: local bundling always succeeds or raises.
            image=DockerImage.from_registry("public.ecr.aws/sam/build-python3.12"),
            local=LocalPipBundler(plan),
        ),
    )


def requirement_names(requirements: Sequence[str]) -> list[str]:
    """Distribution names of requirement specifiers (for checks on a built bundle)."""
    names = []
    for spec in requirements:
        match = _NAME.match(spec)
        if match:
            names.append(_canonical(match.group(1)))
    return names
