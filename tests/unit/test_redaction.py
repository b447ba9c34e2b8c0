"""The one redaction module: `redact` for our own text, `mask_message` for a peer's."""

import random

from shared import redaction
from shared.redaction import MAX_MESSAGE, mask_message, redact


def test_redact_masks_credential_shapes_and_keeps_the_key():
    text = (
        "token=abc123 Authorization: Bearer abcdefgh12345 key sk-ant-api03-abcdef "
        "vault hvs.0123456789abcdefghijKL forge ghp_0123456789ab"
    )
    assert redact(text) == ("token=*** Authorization: *** *** key *** vault *** forge ***")


def test_redact_masks_a_private_key_block():
    text = "x -----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY----- y"
    assert redact(text) == "x *** y"


def test_redact_leaves_plain_text_alone():
    assert redact("instance 42 is running") == "instance 42 is running"


def test_mask_message_masks_known_values_and_token_runs_on_one_bounded_line():
    message = mask_message("bad hunter22 and ghp_x\n" + "a" * 32 + " tail" * 100, ["hunter22", "x"])
    assert message.startswith("bad *** and *** *** tail")
    assert "\n" not in message
    assert len(message) == MAX_MESSAGE and message.endswith("…")


# The masking as it was before each pattern got its cheap pre-check: every pattern over every line.
_REFERENCE = [pattern for pattern, _ in redaction._PATTERNS]


def _reference_redact(text: str) -> str:
    for pattern in _REFERENCE:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + redaction.MASK, text)
        else:
            text = pattern.sub(redaction.MASK, text)
    return text


_FRAGMENTS = [
    "token=",
    "TOKEN: ",
    "x-auth-Token = '",
    '"password": "',
    "passwd=",
    "my_secret=",
    "PAT=",
    "bundle:",
    "private_key=",
    "Authorization: ",
    "Bearer ",
    "bearer\t",
    "sk-ant-api03-",
    "hvs.",
    "s.",
    "hvb.",
    "hvr.",
    "gho_",
    "ghu-",
    "ghs_",
    "ghr_",
    "ghp_",
    "github_pat_",
    "glpat-",
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----END RSA PRIVATE KEY-----",
    "abcdefghijklmnopqrstuvwxyz0123",
    "AbC-_.~+/=",
    " ",
    ",",
    "}",
    "&",
    '"',
    "'",
    "\n",
    "route=/instances",
    "status=200",
    "duration_ms=3.2",
    "\u017fecret=",
    "\u212aey token=",
    "tO\u212aen=",
    "İ",
    "é",
    "path=/x",
    "pattern",
]


def test_redact_masks_exactly_what_every_pattern_over_every_line_would():
    rng = random.Random(20261201)
    for _ in range(5000):
        text = "".join(rng.choice(_FRAGMENTS) for _ in range(rng.randint(1, 12)))
        assert redaction.redact(text) == _reference_redact(text), repr(text)


def test_redact_skips_the_patterns_a_plain_log_line_cannot_match(monkeypatch):
    line = (
        '{"ts": "2026-12-01T09:58:07.656+00:00", "level": "info", "service": "api", '
        '"msg": "http method=GET route=/instances status=200 duration_ms=3.2"}'
    )
    tried: list[str] = []

    class Spy:
        def __init__(self, pattern):
            self.pattern, self.groups = pattern, pattern.groups

        def sub(self, *args):
            tried.append(self.pattern.pattern)
            return self.pattern.sub(*args)

    monkeypatch.setattr(
        redaction, "_PATTERNS", [(Spy(p), needles) for p, needles in redaction._PATTERNS]
    )
    assert redaction.redact(line) == line
    # None of the patterns' substrings is in this line: none is tried.
    assert tried == []
