"""Lambda packaging without Docker: the pip commands and the asset hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.bundling import (
    PACKAGES,
    BundlePlan,
    LocalPipBundler,
    default_plan,
    project_requirements,
    requirement_names,
)


def plan_for(root: Path, requirements: tuple[str, ...] = ("redis>=5",)) -> BundlePlan:
    return BundlePlan(source_root=root, requirements=requirements,
                      no_deps_requirements=("dhanhq>=2.3,<2.4",), pip=("pip",))  # fmt: skip


def test_the_default_plan_targets_lambda_python_312_linux_wheels_only() -> None:
    plan = default_plan()
    commands = plan.pip_commands("/out")
    assert len(commands) == 2
    for command in commands:
        joined = " ".join(command)
        assert "--platform manylinux2014_x86_64" in joined
        assert "--python-version 3.12" in joined
        assert "--implementation cp" in joined
        assert "--only-binary=:all:" in joined
        assert "--target /out" in joined
    with_deps, without_deps = commands
    names = requirement_names(plan.requirements)
    assert {"redis", "orjson", "fastapi", "mangum", "aws-lambda-powertools", "websockets",
            "requests"} <= set(names)  # fmt: skip
    # No pandas (dhanhq's declared dependency) and no boto3 (the runtime has it).
    assert not {"pandas", "boto3", "dhanhq"} & set(names)
    assert "--no-deps" in without_deps and "--no-deps" not in with_deps
    assert requirement_names(plan.no_deps_requirements) == ["dhanhq"]


def test_versions_come_from_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["Redis_Py >=1", "orjson>=3,<4"]\n'
    )
    assert project_requirements(["orjson", "redis-py"], pyproject=tmp_path / "pyproject.toml") == [
        "orjson>=3,<4",
        "Redis_Py >=1",
    ]
    with pytest.raises(ValueError, match="fastapi"):
        project_requirements(["fastapi"], pyproject=tmp_path / "pyproject.toml")


def test_the_asset_hash_follows_sources_and_requirements(tmp_path: Path) -> None:
    for package in ("core", "functions"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "functions" / "api.py").write_text("handler = 1\n")
    first = plan_for(tmp_path).fingerprint()
    assert plan_for(tmp_path).fingerprint() == first

    (tmp_path / "functions" / "__pycache__").mkdir()
    (tmp_path / "functions" / "__pycache__" / "api.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "tests.txt").write_text("not packaged")
    assert plan_for(tmp_path).fingerprint() == first

    assert plan_for(tmp_path, ("redis>=6",)).fingerprint() != first
    (tmp_path / "functions" / "api.py").write_text("handler = 2\n")
    assert plan_for(tmp_path).fingerprint() != first


def test_packages_are_copied_without_bytecode(tmp_path: Path) -> None:
    source, out = tmp_path / "src", tmp_path / "out"
    for package in PACKAGES:
        (source / package / "__pycache__").mkdir(parents=True)
        (source / package / "__init__.py").write_text("")
        (source / package / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (source / "functions" / "schedule").mkdir()
    (source / "functions" / "schedule" / "nse_holidays.json").write_text("{}")
    out.mkdir()
    plan_for(source).copy_packages(str(out))
    assert (out / "functions" / "schedule" / "nse_holidays.json").exists()
    assert not list(out.rglob("*.pyc"))


def test_a_pip_failure_is_reported_not_handed_to_docker(tmp_path: Path) -> None:
    failing = BundlePlan(source_root=tmp_path, requirements=("x",), no_deps_requirements=(),
                         pip=("false",))  # fmt: skip
    with pytest.raises(RuntimeError, match="pip failed"):
        LocalPipBundler(failing).try_bundle(str(tmp_path / "out"))
