"""The layering, checked on the import graph: the domain and the service layer do no I/O of their
own. Only the adapters, the Celery wiring, the web plumbing and the bootstrap import the libraries
that talk to the outside world; entrypoints reach them through shared/bootstrap.py.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Libraries that open sockets, speak a protocol or run a framework.
IO_LIBRARIES = frozenset(
    {
        "celery",
        "kombu",
        "redis",
        "psycopg",
        "psycopg_pool",
        "hvac",
        "yandexcloud",
        "grpc",
        "requests",
        "flask",
        "flask_smorest",
        "werkzeug",
        "urllib3",
        "httpx",
        "socket",
    }
)
PURE_PACKAGES = ("shared/domain", "shared/service_layer")


def _modules(package: str) -> list[pathlib.Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _shared_module(name: str) -> pathlib.Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _reachable_io(path: pathlib.Path, seen: set[pathlib.Path]) -> set[str]:
    """The I/O libraries `path` imports, directly or through the project's own modules."""
    if path in seen:
        return set()
    seen.add(path)
    found: set[str] = set()
    for name in _imports(path):
        top = name.split(".")[0]
        if top in IO_LIBRARIES:
            found.add(f"{name} (in {path.relative_to(ROOT)})")
        elif top == "shared":
            target = _shared_module(name)
            if target is not None:
                found |= _reachable_io(target, seen)
    return found


@pytest.mark.parametrize(
    "module",
    [p for package in PURE_PACKAGES for p in _modules(package)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_domain_and_the_service_layer_reach_no_io_library(module: pathlib.Path) -> None:
    assert _reachable_io(module, set()) == set()


def test_the_check_sees_an_io_import_through_a_project_module(tmp_path: pathlib.Path) -> None:
    # The check itself can fail: an adapter imports psycopg, and reaching it is reported.
    adapter = _shared_module("shared.adapters.registry")
    assert adapter is not None
    assert any(found.startswith("psycopg") for found in _reachable_io(adapter, set()))


def test_the_pure_packages_exist_and_hold_modules() -> None:
    for package in PURE_PACKAGES:
        assert len(_modules(package)) > 2, package
