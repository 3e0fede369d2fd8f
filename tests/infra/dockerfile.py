"""A Dockerfile and its `.dockerignore` read as data, so a test can replay the build without Docker.

Only a single-stage build made of FROM, ENV, WORKDIR, COPY (from the build context), RUN and
CMD is understood, plus the instructions that change nothing on disk (ARG, USER, STOPSIGNAL,
EXPOSE, LABEL, HEALTHCHECK, VOLUME). Anything else (ADD, ENTRYPOINT, `COPY --from`, a second
FROM, a parser directive) raises `UnsupportedError`: a replay that silently skipped it would
prove nothing about the real image.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IGNORED = {"ARG", "USER", "STOPSIGNAL", "EXPOSE", "LABEL", "HEALTHCHECK", "VOLUME", "MAINTAINER"}
COPY_FLAGS_WITHOUT_EFFECT = ("--chown=", "--chmod=", "--link")
SHELL_OPERATORS = ("&&", ";")


class UnsupportedError(ValueError):
    """The Dockerfile uses something this replay cannot reproduce faithfully."""


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    destination: PurePosixPath  # absolute: relative destinations are resolved against WORKDIR
    into_directory: bool  # the destination names a directory (trailing `/`, or many sources)
    text: str


@dataclass(frozen=True)
class Run:
    script: str
    workdir: PurePosixPath

    def commands(self) -> list[list[str]]:
        """The script as argument vectors, for scripts that are `cmd && cmd ; cmd` and no more.

        Pipes, redirections, subshells and `||` raise: running them would need a shell, and a
        shell would run whatever the line says on the test machine.
        """
        lexer = shlex.shlex(self.script, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands: list[list[str]] = [[]]
        for token in lexer:
            if token in SHELL_OPERATORS:
                commands.append([])
            elif token and set(token) <= set(lexer.punctuation_chars):
                raise UnsupportedError(f"RUN {self.script!r}: shell operator {token!r}")
            else:
                commands[-1].append(token)
        return [command for command in commands if command]


Step = Copy | Run


@dataclass(frozen=True)
class Dockerfile:
    steps: tuple[Step, ...]  # the COPY and RUN steps, in build order
    env: dict[str, str]
    workdir: PurePosixPath  # the container's working directory
    cmd: tuple[str, ...]


def instructions(text: str) -> Iterator[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    pending: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if number == 1 and re.match(r"#\s*\w+\s*=", line) and not pending:
            raise UnsupportedError(f"parser directive {line!r}")
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        joined = " ".join(part for part in pending if part)
        pending = []
        keyword, _, arguments = joined.partition(" ")
        yield keyword.upper(), arguments.strip()
    if pending:
        raise UnsupportedError("the last instruction ends with a line continuation")


def _exec_form(arguments: str) -> list[str] | None:
    if not arguments.startswith("["):
        return None
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return value


def _env(arguments: str) -> dict[str, str]:
    words = shlex.split(arguments)
    if words and "=" not in words[0]:  # the legacy `ENV NAME value with spaces` form
        name, _, value = arguments.partition(" ")
        return {name: value.strip()}
    pairs = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep:
            raise UnsupportedError(f"ENV {arguments!r}: {word!r} is not NAME=value")
        pairs[name] = value
    return pairs


def _copy(arguments: str, workdir: PurePosixPath) -> Copy:
    words = _exec_form(arguments) or shlex.split(arguments)
    while words and words[0].startswith("--"):
        flag = words.pop(0)
        if not flag.startswith(COPY_FLAGS_WITHOUT_EFFECT):
            raise UnsupportedError(f"COPY {flag}")
    if len(words) < 2:
        raise UnsupportedError(f"COPY {arguments!r}: needs a source and a destination")
    *sources, destination = words
    into_directory = (
        len(sources) > 1
        or destination.endswith("/")
        or posixpath.basename(destination) in (".", "..")
    )
    return Copy(
        sources=tuple(sources),
        destination=PurePosixPath(posixpath.normpath(posixpath.join(workdir, destination))),
        into_directory=into_directory,
        text=f"COPY {arguments}",
    )


def parse(text: str) -> Dockerfile:
    steps: list[Step] = []
    env: dict[str, str] = {}
    workdir = PurePosixPath("/")
    cmd: tuple[str, ...] = ()
    stages = 0
    for keyword, arguments in instructions(text):
        if keyword == "FROM":
            stages += 1
            if stages > 1:
                raise UnsupportedError("a multi-stage build")
        elif keyword == "ENV":
            env.update(_env(arguments))
        elif keyword == "WORKDIR":
            workdir = PurePosixPath(posixpath.normpath(posixpath.join(workdir, arguments)))
        elif keyword == "COPY":
            steps.append(_copy(arguments, workdir))
        elif keyword == "RUN":
            if _exec_form(arguments) is not None:
                raise UnsupportedError(f"RUN in exec form: {arguments}")
            steps.append(Run(script=arguments, workdir=workdir))
        elif keyword == "CMD":
            cmd = tuple(_exec_form(arguments) or ("/bin/sh", "-c", arguments))
        elif keyword not in IGNORED:
            raise UnsupportedError(keyword)
    if stages != 1:
        raise UnsupportedError("no FROM")
    return Dockerfile(steps=tuple(steps), env=env, workdir=workdir, cmd=cmd)


# --- .dockerignore ----------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go's filepath.Match plus `**`) as a regular expression."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out.append(".*" if i == len(pattern) else "(.*/)?")
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise UnsupportedError(f".dockerignore: unterminated [ in {pattern!r}")
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out))


@dataclass(frozen=True)
class DockerIgnore:
    """The build context filter: the last pattern that matches a path, or one of its parent
    directories, decides; `!pattern` puts a path back."""

    rules: tuple[tuple[re.Pattern[str], bool], ...]  # (pattern, True = exclude)

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclude = not line.startswith("!")
            pattern = posixpath.normpath(line.lstrip("!").strip().lstrip("/"))
            if pattern != ".":
                rules.append((_pattern_regex(pattern), exclude))
        return cls(tuple(rules))

    @classmethod
    def of_context(cls, context: Path) -> DockerIgnore:
        path = context / ".dockerignore"
        return cls.parse(path.read_text()) if path.exists() else cls(())

    def excludes(self, path: str) -> bool:
        parts = PurePosixPath(path).parts
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for pattern, exclude in self.rules:
            if any(pattern.fullmatch(candidate) for candidate in candidates):
                excluded = exclude
        return excluded


def copied_files(
    step: Copy, context: Path, ignore: DockerIgnore
) -> list[tuple[Path, PurePosixPath]]:
    """(file in the build context, absolute path in the image) for every file `step` copies.

    A source that is missing or wholly excluded raises FileNotFoundError, as `docker build` fails.
    """
    into_directory = step.into_directory or any(
        any(ch in source for ch in "*?[") for source in step.sources
    )
    planned: list[tuple[Path, PurePosixPath]] = []
    for source in step.sources:
        relative = posixpath.normpath(source.lstrip("/"))
        if relative.startswith(".."):
            raise UnsupportedError(f"{step.text}: {source} is outside the build context")
        matches = (
            sorted(context.glob(relative))
            if any(ch in relative for ch in "*?[")
            else [context / relative]
        )
        found: list[tuple[Path, PurePosixPath]] = []
        for match in matches:
            name = match.relative_to(context).as_posix()
            if match.is_dir() and not match.is_symlink():
                for base, dirs, files in os.walk(match):
                    dirs.sort()
                    for file in sorted(files):
                        path = Path(base, file)
                        inner = path.relative_to(match).as_posix()
                        # As in Docker, a directory's contents land in the destination.
                        if not ignore.excludes(f"{name}/{inner}".removeprefix("./")):
                            found.append((path, step.destination / inner))
            elif match.exists() and not ignore.excludes(name):
                target = step.destination / match.name if into_directory else step.destination
                found.append((match, target))
        if not found:
            raise FileNotFoundError(
                f"{step.text}: {source} is not in the build context or excluded by .dockerignore"
            )
        planned.extend(found)
    return planned
