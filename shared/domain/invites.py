"""Invites (docs/ARCHITECTURE.md#invites): an onboarding token bound to one tenant.

The token is shown once, when it is issued; what is kept is its SHA-256 (`token_digest`). The
token is 32 random bytes, so no slow hash is needed: a slow, salted hash protects guessable
passwords, and a 256-bit random token cannot be guessed or enumerated from its digest.

A tenant has at most one current invite (not revoked); issuing a new one revokes it. A current
invite is *pending* until it expires, *used* once the tenant stored secrets with it (it keeps
working until it expires, so the tenant can correct a typo), and *expired* after `expires_at`.
"""

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime

from shared.domain.secrets import Secret
from shared.domain.tenants import TenantName

# 32 random bytes, URL-safe base64: 43 characters.
INVITE_TOKEN_BYTES = 32


class InviteState(enum.StrEnum):
    NONE = "none"
    PENDING = "pending"
    USED = "used"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Invite:
    """A tenant's current invite as the registry holds it (never the token, nor its digest)."""

    tenant: TenantName
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None

    def live(self, now: datetime) -> bool:
        return now < self.expires_at

    def state(self, now: datetime) -> InviteState:
        if not self.live(now):
            return InviteState.EXPIRED
        return InviteState.USED if self.used_at is not None else InviteState.PENDING


@dataclass(frozen=True)
class IssuedInvite:
    """A new invite, with its token: handed to the operator once, stored nowhere."""

    tenant: TenantName
    token: Secret
    expires_at: datetime


def token_digest(token: str) -> bytes:
    """What the registry stores and looks an invite up by."""
    return hashlib.sha256(token.encode()).digest()
