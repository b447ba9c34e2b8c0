"""What the onboarding service accepts and shows (docs/ARCHITECTURE.md#http-contracts), as
marshmallow schemas.

Inputs reject unknown fields at every level, and every error message is fixed text: none repeats
the submitted value, because the values are secrets. Loading the secrets body yields a domain
TenantSecrets whose values are `Secret`s (masked repr) from then on. Outputs never hold a value.
"""

import re

from marshmallow import Schema, ValidationError, fields, post_load, pre_load, validate

from shared.domain.secrets import ForgeCredential, Secret, TenantSecrets
from shared.domain.tenants import MAX_TENANT_LENGTH
from shared.web import StrictSchema

CLAUDE_TOKEN_PREFIX = "sk-ant-oat01-"
CLAUDE_TOKEN_MIN, CLAUDE_TOKEN_MAX = 20, 512
NKS_PAT_MAX = 512
FORGE_TOKEN_MAX = 1024
MAX_FORGES = 20
FORGE_NAME_MAX = 63
HOST_MAX = 253

_CLAUDE_TOKEN_TAIL = re.compile(r"[A-Za-z0-9_-]+")
# Tokens are visible ASCII: no spaces, no control characters, nothing a copy-paste adds by accident.
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
# validate.Regexp only anchors at the start: \Z anchors the end.
_FORGE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_ETAG = re.compile(r'"([1-9][0-9]{0,8})"')


def _claude_token(value: str) -> None:
    if not CLAUDE_TOKEN_MIN <= len(value) <= CLAUDE_TOKEN_MAX:
        raise ValidationError(f"must be {CLAUDE_TOKEN_MIN} to {CLAUDE_TOKEN_MAX} characters long")
    if not value.startswith(CLAUDE_TOKEN_PREFIX):
        raise ValidationError(f"must be a Claude OAuth token, starting with {CLAUDE_TOKEN_PREFIX}")
    if not _CLAUDE_TOKEN_TAIL.fullmatch(value.removeprefix(CLAUDE_TOKEN_PREFIX)):
        raise ValidationError(
            f"after {CLAUDE_TOKEN_PREFIX} only letters, digits, '-' and '_' may follow"
        )


def _visible_token(max_length: int):
    def check(value: str) -> None:
        if not value:
            raise ValidationError("must not be empty")
        if len(value) > max_length:
            raise ValidationError(f"must be at most {max_length} characters long")
        if not _VISIBLE_ASCII.fullmatch(value):
            raise ValidationError("may contain only visible ASCII characters (no spaces)")

    return check


class HostName(fields.String):
    """A host name with an optional port, e.g. `github.com` or `git.example.org:3000`.

    No scheme, no path, no user info; labels of letters, digits and inner hyphens. Lower-cased on
    load (host names are case-insensitive), so a forge is stored one way only.
    """

    _error = "must be a host name like github.com or git.example.org:3000, with no scheme or path"

    def _deserialize(self, value, attr, data, **kwargs):
        host = super()._deserialize(value, attr, data, **kwargs).lower()
        name, has_port, port = host.partition(":")
        labels = name.split(".")
        valid_name = len(name) <= HOST_MAX and all(_HOST_LABEL.fullmatch(x) for x in labels)
        valid_port = not has_port or (_PORT.fullmatch(port) and int(port) <= 65535)
        if not (valid_name and valid_port):
            raise ValidationError(self._error)
        return host


class ForgeIn(StrictSchema):
    name = fields.String(
        required=True,
        validate=[
            validate.Length(1, FORGE_NAME_MAX, error=f"must be 1 to {FORGE_NAME_MAX} characters"),
            validate.Regexp(
                _FORGE_NAME,
                error="may contain only a-z, 0-9, '-' and '_', starting with a letter or digit",
            ),
        ],
        metadata={"example": "github"},
    )
    host = HostName(required=True, metadata={"example": "github.com"})
    token = fields.String(
        required=True,
        validate=_visible_token(FORGE_TOKEN_MAX),
        metadata={"description": "write-only", "format": "password"},
    )


def _forge_list(forges: list[dict]) -> None:
    if len(forges) > MAX_FORGES:
        raise ValidationError(f"at most {MAX_FORGES} forges")
    names = [forge["name"] for forge in forges]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValidationError(f"forge names must be unique; repeated: {', '.join(duplicates)}")


class SecretsIn(StrictSchema):
    """The whole set of a tenant's secrets; a PUT replaces what was stored."""

    claude_oauth_token = fields.String(
        required=True,
        validate=_claude_token,
        metadata={"description": f"write-only; starts with {CLAUDE_TOKEN_PREFIX}"},
    )
    nks_pat = fields.String(
        required=True,
        validate=_visible_token(NKS_PAT_MAX),
        metadata={"description": "write-only", "format": "password"},
    )
    forges = fields.List(
        fields.Nested(ForgeIn),
        required=True,
        validate=_forge_list,
        metadata={"description": f"at most {MAX_FORGES}, unique names; [] for none"},
    )

    @pre_load
    def an_object(self, data: object, **_kwargs) -> object:
        # Said before marshmallow's own "Invalid input type.", in words a client understands.
        if not isinstance(data, dict):
            raise ValidationError("the body must be a JSON object")
        return data

    @post_load
    def to_secrets(self, data: dict, **_kwargs) -> TenantSecrets:
        return TenantSecrets(
            claude_oauth_token=Secret(data["claude_oauth_token"]),
            nks_pat=Secret(data["nks_pat"]),
            forges=tuple(
                ForgeCredential(forge["name"], forge["host"], Secret(forge["token"]))
                for forge in data["forges"]
            ),
        )


class OffboardQuery(StrictSchema):
    force = fields.Boolean(
        load_default=False,
        truthy={"true"},
        falsy={"false"},
        error_messages={"invalid": "must be true or false"},
        metadata={"description": "offboard even while the tenant has live instances"},
    )


class SecretsHeaders(StrictSchema):
    """Only the headers the PUT reads; the view passes nothing else in."""

    if_match = fields.String(
        data_key="If-Match",
        metadata={
            "description": 'the version being replaced, as the ETag of GET shows it ("3"); '
            "412 when it is no longer current"
        },
    )

    @post_load
    def to_version(self, data: dict, **_kwargs) -> int | None:
        if "if_match" not in data:
            return None
        match = _ETAG.fullmatch(data["if_match"].strip())
        if match is None:
            raise ValidationError(
                {"If-Match": ['must be one quoted version from an ETag, e.g. "3"']}
            )
        return int(match.group(1))


def etag(version: int) -> str:
    return f'"{version}"'


# --- responses ---------------------------------------------------------------------------------


class FieldsPresence(Schema):
    claude_oauth_token = fields.Boolean(dump_only=True)
    nks_pat = fields.Boolean(dump_only=True)
    forges = fields.List(
        fields.String(), dump_only=True, metadata={"description": "forge names only"}
    )


class SecretsStatus(Schema):
    tenant = fields.String(
        dump_only=True, metadata={"description": f"NFC, at most {MAX_TENANT_LENGTH} characters"}
    )
    presence = fields.Nested(FieldsPresence, dump_only=True, data_key="fields")
    version = fields.Integer(dump_only=True, metadata={"description": "Vault KV version"})
    updated_at = fields.String(
        dump_only=True, metadata={"description": "ISO-8601 UTC, when this version was stored"}
    )


class Whoami(Schema):
    role = fields.String(
        dump_only=True,
        metadata={"description": "tenant (an invite: its own tenant only) | admin (any tenant)"},
    )
    tenant = fields.String(
        dump_only=True,
        allow_none=True,
        metadata={"description": "the invite's tenant; admin: null"},
    )
