"""The import boundaries README's "Layout" states, as import-linter contracts in pyproject.toml.

Each contract is also broken on purpose, in a copy of the tree, to show that it is checked:
a boundary test that could not fail would not be one.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "realtime", "functions", "streamer", "relay", "infra", "local")
PRODUCTION = ("core", "functions", "streamer", "relay", "infra")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on `tree`'s packages (read statically by grimp, never imported)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
         "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def copy_of_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    shutil.copy(ROOT / "pyproject.toml", tree)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules"))
    return tree


def test_the_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


BREAKS = {
    "production imports local": (
        "functions/fanout/runner.py", "import local.invoker\n",
        "Production never imports the local stand-ins BROKEN"),
    "a Lambda handler imports the bridge": (
        "functions/ws/app.py", "import relay.settings\n",
        "Deployables share only core and realtime; realtime builds on core alone BROKEN"),
    "realtime imports a deployable": (
        "realtime/window.py", "import functions.errors\n",
        "Deployables share only core and realtime; realtime builds on core alone BROKEN"),
    "core imports realtime": (
        "core/names.py", "import realtime.keys\n",
        "Deployables share only core and realtime; realtime builds on core alone BROKEN"),
    "the streamer reads the registry": (
        "streamer/lease.py", "import realtime.keys\n",
        "The streamer is feed -> Redis only: it knows nothing of the real-time path BROKEN"),
    "a cycle hidden behind TYPE_CHECKING (infra/nag.py <-> infra/stack.py, as it was)": (
        "infra/nag.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    import infra.stack\n",
        "No import cycles between sibling modules BROKEN"),
}


@pytest.mark.parametrize("case", list(BREAKS), ids=list(BREAKS))
def test_a_forbidden_import_breaks_its_contract(copy_of_tree: Path, case: str) -> None:
    relative, injected, broken = BREAKS[case]
    target = copy_of_tree / relative
    original = target.read_text()
    target.write_text(original + "\n" + injected)
    try:
        result = lint_imports(copy_of_tree)
    finally:
        target.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken in result.stdout, result.stdout


def _string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr) and node.values:
            head = node.values[0]
            if isinstance(head, ast.Constant) and isinstance(head.value, str):
                found.append((node.lineno, head.value))
    return found


def test_no_registry_key_is_named_outside_realtime() -> None:
    """`ws:*` keys are built only in `realtime.keys` (and its scripts): docstrings may name
    them, code may not (a docstring is a statement of its own, so it is skipped here)."""
    offenders = []
    for package in (*PRODUCTION, "local"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            docstrings = _docstring_lines(tree)
            for line, text in _string_constants(tree):
                registry_key = text.startswith("ws:") and not text.startswith("ws://")
                if registry_key and line not in docstrings:
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {text[:40]!r}")
    assert offenders == []


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                lines.add(value.lineno)
    return lines
