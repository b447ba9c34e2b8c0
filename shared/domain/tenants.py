"""Tenant names (docs/ARCHITECTURE.md#tenant-names): 1-63 characters after NFC; letters, digits,
'-', '_', '.'.

Decisions where docs/ARCHITECTURE.md#tenant-names leaves room, all so that two names that look alike
are the same name:
- "letters" are the Unicode L* categories and "digits" are Nd; other numbers (No: '²', '½'; Nl:
  Roman numerals) are not digits.
- Combining marks (Mn, Mc) are allowed after a letter, digit or another mark: many scripts (e.g.
  Devanagari vowel signs and viramas) have no precomposed forms. A mark at the start or after
  '-', '_', '.' has no base of its own, and enclosing marks (Me, e.g. the emoji keycap) are refused.
- Invisible characters are refused: format characters (Cf), including the zero-width joiner and
  non-joiner, and the default-ignorable code points that Unicode files under letters or marks
  (variation selectors, which also turn text into emoji, and the Hangul fillers).
"""

import unicodedata

from shared.domain.errors import InvalidTenantName

MAX_TENANT_LENGTH = 63
# NFC composes at most four code points into one (e.g. U+1F82), so a longer input cannot be valid.
_MAX_RAW_LENGTH = MAX_TENANT_LENGTH * 4
_PUNCTUATION = frozenset("-_.")
# Default_Ignorable_Code_Point members in the L and M categories (Unicode DerivedCoreProperties).
_INVISIBLE = (
    range(0x034F, 0x0350),  # combining grapheme joiner
    range(0x115F, 0x1161),  # Hangul choseong/jungseong fillers
    range(0x17B4, 0x17B6),  # Khmer inherent vowels
    range(0x180B, 0x1810),  # Mongolian free variation selectors (U+180E is Cf anyway)
    range(0x3164, 0x3165),  # Hangul filler
    range(0xFE00, 0xFE10),  # variation selectors 1-16
    range(0xFFA0, 0xFFA1),  # halfwidth Hangul filler
    range(0xE0100, 0xE01F0),  # variation selectors 17-256
)


class TenantName(str):
    """A valid tenant name in its NFC form: built once where a name enters (an HTTP path, body or
    query; a row read back), then passed as is. A str: it compares, hashes, prints, binds as a
    query parameter and serialises as the name itself.

    `TenantName(raw)` raises InvalidTenantName saying why `raw` is not a valid name; given a
    TenantName it returns that same object, so building one again costs nothing.
    """

    __slots__ = ()

    def __new__(cls, raw: object) -> "TenantName":
        if isinstance(raw, TenantName):
            return raw
        return super().__new__(cls, _normalise(raw))

    @classmethod
    def stored(cls, name: str) -> "TenantName":
        """A name read back from this system's own store, wrapped as it is. Every name is written
        as a TenantName, so checking it again would find nothing; and a row written by hand with a
        name the rules refuse must not stop a whole listing, or a reconcile pass, that reads it.
        """
        return super().__new__(cls, name)


def _normalise(raw: object) -> str:
    """The NFC form of a valid tenant name, or InvalidTenantName saying why it is not one."""
    if not isinstance(raw, str):
        raise InvalidTenantName("tenant must be a string")
    # Bound the work before normalising: a huge name is wrong anyway.
    if len(raw) > _MAX_RAW_LENGTH:
        raise InvalidTenantName(f"tenant must be at most {MAX_TENANT_LENGTH} characters")
    name = unicodedata.normalize("NFC", raw)
    if not name:
        raise InvalidTenantName("tenant must not be empty")
    if len(name) > MAX_TENANT_LENGTH:
        raise InvalidTenantName(f"tenant must be at most {MAX_TENANT_LENGTH} characters")
    if name.startswith("."):
        raise InvalidTenantName("tenant must not start with '.'")
    previous = ""
    for ch in name:
        kind = _kind(ch)
        if kind is None:
            raise InvalidTenantName(
                f"tenant may contain only letters, digits, '-', '_' and '.'; found {_describe(ch)}"
            )
        if kind == "mark" and previous not in ("letter", "digit", "mark"):
            raise InvalidTenantName(
                f"a combining mark must follow a letter or digit; found {_describe(ch)}"
            )
        previous = kind
    return name


def _kind(ch: str) -> str | None:
    if ch in _PUNCTUATION:
        return "punctuation"
    if any(ord(ch) in invisible for invisible in _INVISIBLE):
        return None
    category = unicodedata.category(ch)
    if category[0] == "L":
        return "letter"
    if category == "Nd":
        return "digit"
    if category in ("Mn", "Mc"):
        return "mark"
    return None


def _describe(ch: str) -> str:
    code = f"U+{ord(ch):04X}"
    if ch.isprintable() and not ch.isspace() and unicodedata.category(ch)[0] != "M":
        return f"{ch!r} ({code})"
    return code
