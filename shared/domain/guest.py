"""What dark-agent reports, decoded and typed. Public data only: no token, no key material."""

from dataclasses import dataclass


@dataclass(frozen=True)
class GuestHealth:
    status: str
    version: str | None = None
    uptime_secs: float | None = None


@dataclass(frozen=True)
class ForgeRegistration:
    name: str
    host: str | None = None
    registered: bool = False

    def public_summary(self) -> dict[str, object]:
        """The JSON the registry stores and the API shows for this forge."""
        return {"name": self.name, "host": self.host, "registered": self.registered}


@dataclass(frozen=True)
class GuestIdentity:
    """The guest's identity after init or import: what the registry keeps once `ready`."""

    ssh_pubkey: str
    forges: tuple[ForgeRegistration, ...] = ()
    nks_configured: bool = False  # dark-agent 0.19.0 omits it
