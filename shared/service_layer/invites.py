"""Invite handlers (docs/ARCHITECTURE.md#invites): issue and revoke a tenant's onboarding token on
the gateway; on the onboarding service, find whose token a bearer is and record its first use.

The token leaves `issue` once, as a masked `Secret`; only its digest is stored. Expiry is judged
here, by this process's clock, which also set `expires_at`.
"""

import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from shared.domain.invites import INVITE_TOKEN_BYTES, Invite, IssuedInvite, token_digest
from shared.domain.secrets import Secret
from shared.domain.tenants import TenantName
from shared.ports import InviteStore

log = logging.getLogger("dark.invites")


def _now() -> datetime:
    return datetime.now(UTC)


class Invites:
    def __init__(
        self, store: InviteStore, *, ttl_secs: int, clock: Callable[[], datetime] = _now
    ) -> None:
        self._store = store
        self._ttl = timedelta(seconds=ttl_secs)
        self._clock = clock

    def issue(self, tenant: TenantName) -> IssuedInvite:
        """A new invite for `tenant`; its current one, if any, stops working."""
        token = secrets.token_urlsafe(INVITE_TOKEN_BYTES)
        invite = self._store.issue(tenant, token_digest(token), self._clock() + self._ttl)
        log.info(
            "invite issued, expires %s", invite.expires_at.isoformat(), extra={"tenant": tenant}
        )
        return IssuedInvite(tenant=tenant, token=Secret(token), expires_at=invite.expires_at)

    def revoke(self, tenant: TenantName) -> None:
        """The tenant's current invite stops working (idempotent)."""
        if self._store.revoke(tenant):
            log.info("invite revoked", extra={"tenant": tenant})

    def tenant_of(self, token: str) -> TenantName | None:
        """The tenant a live invite token is bound to; None for any other string (unknown,
        revoked or expired)."""
        invite = self._store.find(token_digest(token))
        if invite is None or not invite.live(self._clock()):
            return None
        return invite.tenant

    def record_use(self, token: str) -> None:
        """The tenant stored its secrets with this token: the invite shows as used."""
        self._store.mark_used(token_digest(token))

    def current(self) -> dict[TenantName, Invite]:
        """Every tenant's current invite (pending, used or expired), by tenant."""
        return self._store.current()

    def now(self) -> datetime:
        return self._clock()
