"""The README's layout table names the repository as it is: every path it lists exists, every
module it names in a package exists, and every package and top-level module under shared/ and
services/ is listed."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _layout_rows() -> list[tuple[list[str], str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows.append((re.findall(r"`([^`]+)`", cells[0]), cells[1]))
    return rows


def _listed_paths() -> set[str]:
    return {path.rstrip("/") for paths, _ in _layout_rows() for path in paths}


def test_the_layout_table_has_rows():
    assert len(_layout_rows()) >= 10


def test_every_listed_path_exists():
    missing = sorted(p for p in _listed_paths() if not (ROOT / p).exists())
    assert missing == []


def test_every_module_named_in_a_package_row_exists():
    missing = []
    for paths, what in _layout_rows():
        for package in (p for p in paths if p.endswith("/")):
            for module in re.findall(r"`([a-z_]+\.py)`", what):
                if not (ROOT / package / module).exists():
                    missing.append(f"{package}{module}")
    assert missing == []


def test_every_package_and_module_of_shared_and_services_is_listed():
    listed = _listed_paths()
    unlisted = []
    for top in ("shared", "services"):
        for entry in sorted((ROOT / top).iterdir()):
            name = f"{top}/{entry.name}"
            if entry.name.startswith(("_", ".")) or entry.name == "__pycache__":
                continue
            if (entry.is_dir() or entry.suffix == ".py") and name not in listed:
                unlisted.append(name)
    assert unlisted == []
