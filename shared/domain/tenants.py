"""Tenant names (DESIGN §6): 1–63 characters after NFC; letters, digits, '-', '_', '.'."""

import unicodedata

from shared.domain.errors import InvalidTenantName

MAX_TENANT_LENGTH = 63
_PUNCTUATION = frozenset("-_.")


def normalize_tenant(raw: object) -> str:
    """Return the NFC form of a valid tenant name, or raise InvalidTenantName saying why."""
    if not isinstance(raw, str):
        raise InvalidTenantName("tenant must be a string")
    # Bound the work before normalising: NFC can expand, and a huge name is wrong anyway.
    if len(raw) > MAX_TENANT_LENGTH * 4:
        raise InvalidTenantName(f"tenant must be at most {MAX_TENANT_LENGTH} characters")
    name = unicodedata.normalize("NFC", raw)
    if not name:
        raise InvalidTenantName("tenant must not be empty")
    if len(name) > MAX_TENANT_LENGTH:
        raise InvalidTenantName(f"tenant must be at most {MAX_TENANT_LENGTH} characters")
    if name.startswith("."):
        raise InvalidTenantName("tenant must not start with '.'")
    for ch in name:
        if ch in _PUNCTUATION:
            continue
        category = unicodedata.category(ch)
        # L* letters, Nd/Nl/No digits and numbers; M* marks so that combining sequences that have
        # no precomposed form (e.g. many Devanagari names) stay valid.
        if category[0] in "LM" or category in ("Nd",):
            continue
        raise InvalidTenantName(
            f"tenant may contain only letters, digits, '-', '_' and '.'; found {_describe(ch)}"
        )
    return name


def _describe(ch: str) -> str:
    if ch.isprintable() and not ch.isspace():
        return repr(ch)
    return f"U+{ord(ch):04X}"
