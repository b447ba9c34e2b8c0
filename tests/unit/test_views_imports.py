"""The HTTP views reach the outside world only through the container shared/bootstrap.py builds:
they import no broker, database or vault client and no adapter, only flask and the web plumbing."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
VIEWS = ["services/api/views.py", "services/onboarding/views.py", "services/api/ui.py"]
FORBIDDEN = frozenset(
    {"celery", "kombu", "redis", "psycopg", "psycopg_pool", "hvac", "yandexcloud", "grpc"}
)


def _imports(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("view", VIEWS)
def test_views_import_no_io_client_and_no_adapter(view: str) -> None:
    imports = _imports(ROOT / view)
    assert {name for name in imports if name.split(".")[0] in FORBIDDEN} == set()
    assert {
        name for name in imports if name.startswith(("shared.adapters", "shared.celery"))
    } == set()
