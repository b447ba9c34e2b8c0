"""Every reference to a document points into this repository, and at an anchor the document has.

Scans the sources, the Markdown, the Compose/YAML files, the SQL migrations and the Makefile for
- a Markdown file named by path (`README.md`, `deploy/README.md`, `docs/OPERATIONS.md#…`):
  the file must exist (beside the referring file or from the repository root), and the anchor,
  if any, must be a heading of that file (GitHub's slugs);
- a same-document link `[…](#anchor)` in a Markdown file: the heading must exist;
- a section of a contract kept outside the repository (the old design and style documents,
  cited by section number): there must be none, since nobody who clones the repository has them.
This file itself is left out of the scan: it has to spell the patterns it looks for.
"""

import re
import unicodedata
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".venv", ".git", ".run", ".lock-venv", "node_modules", "__pycache__", ".pytest_cache"}
SUFFIXES = {".py", ".md", ".yml", ".yaml", ".sql"}
NAMES = {"Makefile"}

URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.I)
DOC_REF = re.compile(r"(?<![\w./-])((?:\.{1,2}/)*(?:[\w.-]+/)*[\w.-]+\.md)(?:#([\w-]+))?")
LOCAL_ANCHOR = re.compile(r"\]\(#([^)\s]+)\)")
# Spelled in two, so that a grep of the repository for the names finds no citation here.
CONTRACT_DOC, HABITS_DOC = "DES" + "IGN", "STY" + "LE"
# The outside contracts were cited as "<NAME> §4", "<NAME>.md", "<NAME> 11" and "<NAME>.md 3".
OUTSIDE = re.compile(
    r"\b(?:" + CONTRACT_DOC + r"(?:\.md|\s*§)|" + HABITS_DOC + r"(?:\.md)?\s*§?\s*\d+)|§\s*\d+"
)
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def scanned_files() -> list[Path]:
    found = []
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if any(part in SKIP_DIRS for part in relative.parts) or not path.is_file():
            continue
        wanted = path.suffix in SUFFIXES or path.name in NAMES
        if wanted and path.resolve() != Path(__file__).resolve():
            found.append(path)
    return sorted(found)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    result = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return frozenset(result)


def resolve(referrer: Path, target: str) -> Path | None:
    for base in (referrer.parent, ROOT):
        candidate = (base / target).resolve()
        if candidate.is_file() and ROOT in candidate.parents:
            return candidate
    return None


def problems_in(path: Path) -> list[str]:
    found = []
    where = path.relative_to(ROOT)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = URL.sub(" ", line)
        for match in OUTSIDE.finditer(text):
            found.append(
                f"{where}:{number}: {match.group(0)!r} cites a document kept outside the "
                "repository; point into docs/ARCHITECTURE.md (or the doc that says it) instead"
            )
        for match in DOC_REF.finditer(text):
            target, anchor = match.group(1), match.group(2)
            document = resolve(path, target)
            if document is None:
                found.append(f"{where}:{number}: {target} is not a file in this repository")
            elif anchor and anchor not in anchors(document):
                found.append(
                    f"{where}:{number}: {target} has no heading with the anchor #{anchor} "
                    f"(it has: {', '.join(sorted(anchors(document))) or 'no headings'})"
                )
        if path.suffix == ".md":
            for match in LOCAL_ANCHOR.finditer(text):
                if match.group(1) not in anchors(path.resolve()):
                    found.append(f"{where}:{number}: no heading in this file has #{match.group(1)}")
    return found


def test_every_document_reference_points_at_a_document_and_anchor_of_this_repository():
    problems = [problem for path in scanned_files() for problem in problems_in(path)]
    assert not problems, "references that lead nowhere:\n  " + "\n  ".join(problems)


def test_slugs_follow_github():
    assert slug("HTTP contracts") == "http-contracts"
    assert slug("`make run`: the local stack") == "make-run-the-local-stack"
    assert slug("Recovering from a Redis loss") == "recovering-from-a-redis-loss"
    assert slug("Where each part lives") == "where-each-part-lives"


def test_the_scanner_sees_what_it_must_refuse(tmp_path):
    referrer = ROOT / "docs" / "a-referrer.md"
    cited = CONTRACT_DOC + " §4"
    assert OUTSIDE.search(f"see {cited} and {HABITS_DOC}.md 3")
    assert not OUTSIDE.search(f"{CONTRACT_DOC}_MOVES and {HABITS_DOC} guide")
    assert resolve(referrer, "../README.md") == ROOT / "README.md"
    assert resolve(referrer, "nowhere/missing.md") is None
    assert [m.group(1, 2) for m in DOC_REF.finditer("(docs/X.md#a-b), y.md.")] == [
        ("docs/X.md", "a-b"),
        ("y.md", None),
    ]
