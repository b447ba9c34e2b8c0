"""Secret-holding value types. Their repr and str never show the value."""

from dataclasses import dataclass, field
from typing import Any, NoReturn


class Secret:
    """A string that does not print itself. Call `reveal()` at the one place that needs it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> NoReturn:  # never pickled into a queue or cache by accident
        raise TypeError("Secret values are not serialisable")


@dataclass(frozen=True)
class ForgeCredential:
    name: str
    host: str
    token: Secret = field(repr=False)


@dataclass(frozen=True)
class TenantSecrets:
    claude_oauth_token: Secret = field(repr=False)
    nks_pat: Secret = field(repr=False)
    forges: tuple[ForgeCredential, ...] = ()
    version: int | None = None


@dataclass(frozen=True)
class SecretsPresence:
    """What is set for a tenant, never the values."""

    claude_oauth_token: bool
    nks_pat: bool
    forges: tuple[str, ...]  # forge names only
    version: int
    updated_at: str  # ISO-8601 UTC, as Vault reports it


class Bundle:
    """A tenant's durable credential bundle as exported by dark-agent. Opaque and secret."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            raise TypeError("bundle must be a JSON object")
        self._data = data

    def reveal(self) -> dict[str, Any]:
        return self._data

    def __repr__(self) -> str:
        return "Bundle(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bundle) and other._data == self._data

    def __hash__(self) -> int:
        return id(self)

    def __reduce__(self) -> NoReturn:
        raise TypeError("Bundle values are not serialisable")
