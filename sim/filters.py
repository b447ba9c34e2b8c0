"""The YC list filter language, as far as InstanceService.List documents it.

`<field> <op> <value> [AND ...]` with op one of `=`, `!=`, `IN`, `NOT IN`, values quoted with `"` or
`'` (C-style escapes) and only the fields below. Anything else is rejected the way YC rejects it, so
code that leans on a label or prefix filter fails here before it fails in production.
"""

import re
from collections.abc import Callable, Mapping

FIELDS = frozenset({"id", "name", "created_at", "status", "zone_id", "platform_id", "host_id"})

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>!=|=|\(|\)|,)
      | (?P<word>[A-Za-z0-9_.:+\-]+)
    )""",
    re.VERBOSE,
)
_ESCAPE = re.compile(r"\\(.)")

Predicate = Callable[[Mapping[str, str]], bool]


class FilterError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise FilterError(f"unexpected character {text[pos:].lstrip()[:1]!r} in filter")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "string":
            value = _ESCAPE.sub(r"\1", value[1:-1])
        out.append((kind, value))
    return out


def parse(text: str) -> Predicate:
    """Compile a filter into a predicate over a VM's filterable fields (all strings)."""
    tokens = _tokens(text)
    if not tokens:
        return lambda _fields: True
    conditions: list[Predicate] = []
    i = 0
    while True:
        condition, i = _condition(tokens, i)
        conditions.append(condition)
        if i == len(tokens):
            return lambda fields: all(c(fields) for c in conditions)
        if tokens[i] != ("word", "AND"):
            raise FilterError(f"expected AND, got {tokens[i][1]!r}")
        i += 1


def _condition(tokens: list[tuple[str, str]], i: int) -> tuple[Predicate, int]:
    kind, field = tokens[i] if i < len(tokens) else ("", "")
    if kind != "word":
        raise FilterError("expected a field name")
    if field not in FIELDS:
        supported = ", ".join(sorted(FIELDS))
        raise FilterError(f"filtering by {field!r} is not supported; supported: {supported}")
    rest = tokens[i + 1 :]
    if rest[:1] in ([("op", "=")], [("op", "!=")]):
        value, j = _value(tokens, i + 2)
        if rest[0][1] == "=":
            return (lambda f: f[field] == value), j
        return (lambda f: f[field] != value), j
    if rest[:1] == [("word", "IN")]:
        values, j = _values(tokens, i + 2)
        return (lambda f: f[field] in values), j
    if rest[:2] == [("word", "NOT"), ("word", "IN")]:
        values, j = _values(tokens, i + 3)
        return (lambda f: f[field] not in values), j
    raise FilterError(f"unsupported operator after {field!r}; use =, !=, IN or NOT IN")


def _value(tokens: list[tuple[str, str]], i: int) -> tuple[str, int]:
    if i < len(tokens) and tokens[i][0] in ("string", "word") and tokens[i][1] != "AND":
        return tokens[i][1], i + 1
    raise FilterError("expected a value")


def _values(tokens: list[tuple[str, str]], i: int) -> tuple[frozenset[str], int]:
    if i >= len(tokens) or tokens[i] != ("op", "("):
        raise FilterError("expected ( after IN")
    values: set[str] = set()
    i += 1
    while True:
        value, i = _value(tokens, i)
        values.add(value)
        if i < len(tokens) and tokens[i] == ("op", ","):
            i += 1
            continue
        if i < len(tokens) and tokens[i] == ("op", ")"):
            return frozenset(values), i + 1
        raise FilterError("expected , or ) in the IN list")
