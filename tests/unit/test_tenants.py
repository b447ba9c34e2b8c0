"""Tenant names (docs/ARCHITECTURE.md#tenant-names) and the decisions shared/domain/tenants.py
documents beyond it.

1-63 characters after NFC; Unicode letters and digits, '-', '_', '.'; not starting with '.';
no '/', control characters or whitespace; nothing invisible, no emoji.
"""

import json
import unicodedata

import pytest

from shared.domain.errors import InvalidTenantName
from shared.domain.tenants import MAX_TENANT_LENGTH, TenantName

ACCEPTED = {
    "ascii": "acme",
    "hyphen": "acme-corp",
    "underscore and dot": "a_b.c",
    "single letter": "x",
    "digits only": "2024",
    "letters and digits": "team42",
    "upper case": "ACME",
    "trailing dot": "acme.",
    "leading hyphen": "-acme",
    "Cyrillic": "компания",
    "Greek with tonos": "εταιρεία",
    "Latin with diacritics": "Ärzte-Gruppe",
    "CJK": "公司",
    "Japanese with a prolonged sound mark (Lm)": "コーヒー",
    "Hangul": "회사",
    "Devanagari with vowel signs and a virama (marks)": "हिन्दी",
    "Thai with marks": "บริษัท",
    "Arabic": "شركة",
    "Arabic-Indic digits (Nd)": "١٢٣",
    "63 ASCII characters": "a" * MAX_TENANT_LENGTH,
    "63 Cyrillic characters": "ж" * MAX_TENANT_LENGTH,
}

REJECTED = {
    "empty": "",
    "dot": ".",
    "dot dot": "..",
    "hidden": ".hidden",
    "slash": "a/b",
    "leading slash": "/acme",
    "backslash": "a\\b",
    "percent-encoded slash": "%2F",
    "percent sign": "a%b",
    "colon": "a:b",
    "at sign": "a@b",
    "space": "a b",
    "leading space": " acme",
    "trailing space": "acme ",
    "tab": "a\tb",
    "newline": "acme\n",
    "carriage return": "a\rb",
    "NUL": "a\x00b",
    "escape sequence": "\x1b[31macme",
    "DEL": "a\x7fb",
    "C1 control NEL": "a\x85b",
    "no-break space": "a\u00a0b",
    "ideographic space": "a\u3000b",
    "line separator": "a\u2028b",
    "zero-width space": "a\u200bb",
    "zero-width joiner": "a\u200db",
    "zero-width non-joiner": "a\u200cb",
    "byte order mark": "\ufeffacme",
    "right-to-left override": "a\u202eb",
    "soft hyphen": "a\u00adb",
    "variation selector 16 after a letter": "a\ufe0f",
    "combining grapheme joiner": "a\u034fb",
    "Hangul filler (an invisible letter)": "\u3164",
    "Hangul filler inside a name": "a\u3164b",
    "emoji": "\U0001f600",
    "emoji in a name": "acme\U0001f680",
    "emoji with a skin-tone modifier": "\U0001f44d\U0001f3fd",
    "keycap emoji (digit, VS16, enclosing mark)": "1\ufe0f\u20e3",
    "enclosing mark after a letter": "a\u20dd",
    "flag (regional indicators)": "\U0001f1f7\U0001f1fa",
    "leading combining mark": "\u0301acme",
    "combining mark after punctuation": "a-\u0301b",
    "superscript digit (No)": "x\u00b2",
    "vulgar fraction (No)": "\u00bd",
    "Roman numeral (Nl)": "\u216b",
    "lone surrogate": "a\ud800",
    "private use": "a\ue000",
    "64 characters": "a" * (MAX_TENANT_LENGTH + 1),
    "64 Cyrillic characters": "ж" * (MAX_TENANT_LENGTH + 1),
    "10,000 characters": "a" * 10_000,
}


@pytest.mark.parametrize("name", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_valid_names_are_accepted_unchanged(name):
    assert TenantName(name) == name


@pytest.mark.parametrize("name", REJECTED.values(), ids=REJECTED.keys())
def test_invalid_names_are_rejected(name):
    with pytest.raises(InvalidTenantName):
        TenantName(name)


@pytest.mark.parametrize("value", [None, 42, b"acme", ["acme"], {"name": "acme"}])
def test_a_tenant_that_is_not_a_string_is_rejected(value):
    with pytest.raises(InvalidTenantName, match="must be a string"):
        TenantName(value)


@pytest.mark.parametrize(
    "nfc",
    ["café", "Ärzte", "회사", "Ελλάδα", "tiếng-việt", "ᾂ"],
    ids=["latin", "umlaut", "hangul", "greek", "vietnamese", "greek-three-marks"],
)
def test_decomposed_input_comes_back_composed_and_equal_to_the_composed_input(nfc):
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    assert TenantName(nfd) == TenantName(nfc) == nfc
    assert unicodedata.is_normalized("NFC", TenantName(nfd))


def test_the_length_limit_applies_after_normalisation():
    composed = "é" * MAX_TENANT_LENGTH
    decomposed = unicodedata.normalize("NFD", composed)
    assert len(decomposed) == 2 * MAX_TENANT_LENGTH
    assert TenantName(decomposed) == composed

    # U+1F82 decomposes into four code points, the most any character does.
    widest = "ᾂ" * MAX_TENANT_LENGTH
    assert TenantName(unicodedata.normalize("NFD", widest)) == widest

    with pytest.raises(InvalidTenantName, match="at most 63"):
        TenantName(unicodedata.normalize("NFD", "é" * (MAX_TENANT_LENGTH + 1)))


def test_normalising_twice_changes_nothing():
    for name in ACCEPTED.values():
        assert TenantName(TenantName(name)) == TenantName(name)


def test_a_tenant_name_is_its_nfc_str():
    nfd = unicodedata.normalize("NFD", "café")
    name = TenantName(nfd)
    assert isinstance(name, str)
    assert name == "café" and hash(name) == hash("café")
    assert str(name) == "café" and type(str(name)) is str
    assert repr(name) == repr("café") and f"{name}" == "café"
    assert json.dumps({"tenant": name}) == json.dumps({"tenant": "café"})


def test_building_a_tenant_name_from_one_returns_it_unchecked():
    name = TenantName("acme")
    assert TenantName(name) is name


def test_a_stored_name_is_wrapped_as_it_is():
    # A row written by hand: read back, not refused (the rules apply where names come in).
    stored = TenantName.stored("a/b")
    assert type(stored) is TenantName and stored == "a/b"
    assert TenantName.stored("acme") == TenantName("acme")


def test_messages_name_the_offending_character_without_echoing_invisible_ones():
    with pytest.raises(InvalidTenantName, match=r"found '/' \(U\+002F\)"):
        TenantName("a/b")
    with pytest.raises(InvalidTenantName, match=r"found U\+0009$"):
        TenantName("a\tb")
    with pytest.raises(InvalidTenantName, match=r"found U\+200D$"):
        TenantName("a\u200db")
    with pytest.raises(InvalidTenantName, match=r"combining mark must follow .* U\+0301$"):
        TenantName("\u0301a")
    with pytest.raises(InvalidTenantName, match=r"must not start with '\.'"):
        TenantName(".hidden")
    with pytest.raises(InvalidTenantName, match="must not be empty"):
        TenantName("")
