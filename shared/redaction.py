"""Masking secrets in text that leaves the process: the one place that knows what a secret looks
like in a string.

Masking is the second line of defence. The first is that secret-bearing values are never put in
text at all (they travel as `Secret`/`Bundle`, whose repr is masked).

Two entry points, for two kinds of text:

- `redact`: text we wrote ourselves (log lines, error reasons). Credentials are recognised by
  their shape or by the key that introduces them (`token=…`, `"password": …`) and masked in place;
  the rest of the text is kept as it is.
- `mask_message`: text a peer wrote (a guest's error message), which may echo the secrets we just
  sent it. The values we know we sent are masked, then any token-like run whatever its key, control
  characters are flattened and the result is bounded, so it fits in a one-line failure reason.
"""

import re
from collections.abc import Iterable

MASK = "***"

# --- redact: our own text -----------------------------------------------------------------------

# Values that look like credentials, wherever they appear in a message; with each, substrings one
# of which any match contains (in lower case): a line that has none of them skips the pattern. The
# key=value pattern costs ~50 µs on a typical log line (its `[\w-]*` is tried at every position),
# and almost no line names a secret's key: one line per request cannot pay that.
_PATTERNS: list[tuple[re.Pattern[str], tuple[str, ...]]] = [
    # Anthropic / Claude tokens
    (re.compile(r"sk-ant-[A-Za-z0-9]{2,8}-[A-Za-z0-9_\-]{4,}"), ("sk-ant-",)),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]{8,}"), ("bearer",)),
    # Vault / OpenBao tokens
    (re.compile(r"\b(?:hvs|hvb|hvr|s)\.[A-Za-z0-9_\-]{20,}"), ("s.", "hvb.", "hvr.")),
    (
        re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat|glpat)[_-][A-Za-z0-9_\-]{10,}"),
        ("gh", "github_pat", "glpat"),
    ),
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"
        ),
        ("-----begin ",),
    ),
    # key=value / "key": "value" pairs whose key names a secret
    (
        re.compile(
            r"(?i)([\"']?\b[\w-]*(?:token|pat|secret|password|passwd|bundle|private_key|authorization)"
            r"[\w-]*[\"']?\s*[:=]\s*[\"']?)([^\"'\s,}&]+)"
        ),
        ("token", "pat", "secret", "passw", "bundle", "private_key", "authorization"),
    ),
]


# Any pattern's substring: one search tells that a line (most log lines) needs no pattern at all.
_ANY_NEEDLE = re.compile(
    "|".join(re.escape(needle) for _, needles in _PATTERNS for needle in needles)
)


def redact(text: str) -> str:
    """`text` with every credential-shaped value replaced by `***` (a key before it is kept)."""
    # The substrings decide only for ASCII text: a case-insensitive pattern also matches a few
    # other letters (the Kelvin sign for k, the long s for s) that lower() does not map.
    folded = text.lower() if text.isascii() else None
    if folded is not None and _ANY_NEEDLE.search(folded) is None:
        return text
    for pattern, needles in _PATTERNS:
        if folded is not None and not any(needle in folded for needle in needles):
            continue
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + MASK, text)
        else:
            text = pattern.sub(MASK, text)
        if folded is not None:
            folded = text.lower()
    return text


# --- mask_message: a peer's text ----------------------------------------------------------------

MAX_MESSAGE = 300

# Known token prefixes, then any long unbroken run of token alphabet: a peer that echoes its input
# in an error must not get a secret into our failure reasons.
_TOKENISH = re.compile(
    r"(?:sk-ant-|ghp_|gho_|ghu_|ghs_|ghr_|github_pat_|glpat-)\S*|[A-Za-z0-9+/=_.\-]{32,}"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
# Secret values shorter than this are masked by the pattern above or not at all: replacing every
# occurrence of a very short string would garble the message without protecting anything.
_MIN_MASKED_VALUE = 4


def mask_message(message: str, secrets: Iterable[str] = ()) -> str:
    """`message` fit for a failure reason: secret values and token-like runs masked, one line,
    at most MAX_MESSAGE characters."""
    for value in secrets:
        if len(value) >= _MIN_MASKED_VALUE:
            message = message.replace(value, MASK)
    message = _TOKENISH.sub(MASK, message)
    message = _CONTROL.sub(" ", message).strip()
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return message
