"""Settings from the environment (docs/ARCHITECTURE.md#configuration).

An empty variable counts as unset. Each setting has a default or a start-up error that names the
variable. `.env.example` lists every variable; a test keeps the two in step.
"""

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Which of a VM's addresses the control plane calls its guest at: the one-to-one NAT address, or the
# VPC address (a control plane inside the VPC).
GUEST_NETWORKS = ("public", "internal")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _int(raw: str) -> int:
    return int(raw.strip())


def _nonneg_int(raw: str) -> int:
    value = int(raw.strip())
    if value < 0:
        raise ValueError("must be zero or more")
    return value


def _pos_float(raw: str) -> float:
    value = float(raw.strip())
    if value <= 0:
        raise ValueError("must be more than zero")
    return value


def _tokens(raw: str) -> frozenset[str]:
    tokens = frozenset(t.strip() for t in raw.split(",") if t.strip())
    if any(len(t) < 16 for t in tokens):
        raise ValueError("each token must be at least 16 characters")
    return tokens


_CLOUD_ID_RE = re.compile(r"[a-z][a-z0-9-]{1,49}")


def _cloud_ids(raw: str) -> tuple[str, ...]:
    ids = tuple(dict.fromkeys(i.strip() for i in raw.split(",") if i.strip()))
    bad = [i for i in ids if not _CLOUD_ID_RE.fullmatch(i)]
    if bad:
        raise ValueError(f"not a cloud resource id: {bad[0]!r} (comma-separated ids expected)")
    return ids


def _guest_network(raw: str) -> str:
    value = raw.strip().lower()
    if value not in GUEST_NETWORKS:
        raise ValueError(f"expected one of {', '.join(GUEST_NETWORKS)}")
    return value


def _pos_int(raw: str) -> int:
    value = int(raw.strip())
    if value <= 0:
        raise ValueError("must be more than zero")
    return value


def _str(raw: str) -> str:
    return raw.strip()


def _session_secret(raw: str) -> str:
    secret = raw.strip()
    if len(secret) < 32:
        raise ValueError("must be at least 32 characters")
    return secret


def _url(raw: str) -> str:
    url = raw.strip()
    if not url.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return url


def _bind(raw: str) -> str:
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected host:port")
    return raw.strip()


def env(
    name: str,
    default: object = None,
    parse: Callable[[str], object] = _str,
    doc: str = "",
    secret: bool = False,
) -> Any:
    """A dataclass field read from `name` (typed, like `field`, as whatever it is assigned to)."""
    return field(
        default=default, repr=not secret, metadata={"env": name, "parse": parse, "doc": doc}
    )


@dataclass(frozen=True)
class Settings:
    environment: str = env("DARK_ENV", "development", doc="development | production")
    database_url: str = env(
        "DATABASE_URL",
        "postgresql://postgres@127.0.0.1:5432/dark",
        doc="a managed Postgres: ?sslmode=verify-full&sslrootcert=/path/to/root.crt",
    )
    db_require_tls: bool = env(
        "DARK_DB_REQUIRE_TLS",
        False,
        _bool,
        doc="refuse a DATABASE_URL without sslmode=verify-full (also implied by sslrootcert)",
    )
    redis_url: str = env(
        "REDIS_URL",
        "redis://127.0.0.1:6379/0",
        doc="broker and results: redis://, rediss:// (TLS) or sentinel://host:port;sentinel://...",
    )
    redis_ca_file: str | None = env(
        "REDIS_CA_FILE",
        doc="PEM file of the CA that signed Redis's certificate; set = TLS required (rediss://, or "
        "sentinel:// whose masters speak TLS); unset with rediss:// = the system's roots",
    )
    redis_sentinel_master: str | None = env(
        "REDIS_SENTINEL_MASTER", doc="the master's name; required with sentinel:// URLs"
    )
    vault_addr: str = env("VAULT_ADDR", "http://127.0.0.1:8200")
    vault_token: str | None = env("VAULT_TOKEN", secret=True)
    vault_namespace: str | None = env("VAULT_NAMESPACE")
    vault_kv_mount: str = env("VAULT_KV_MOUNT", "secret")
    vault_transit_mount: str = env("VAULT_TRANSIT_MOUNT", "transit")
    bundle_key_name: str = env("DARK_BUNDLE_KEY", "dark-bundles")
    vault_timeout: float = env("VAULT_TIMEOUT_SECS", 5.0, _pos_float)

    yc_endpoint: str = env("YC_ENDPOINT", "api.cloud.yandex.net:443")
    yc_root_cert: str | None = env("YC_ROOT_CERT", doc="PEM file; unset = system roots")
    yc_iam_token: str | None = env("YC_IAM_TOKEN", secret=True)
    yc_sa_key_file: str | None = env("YC_SA_KEY_FILE")
    yc_folder_id: str = env("YC_FOLDER_ID", "dark-folder")
    yc_subnet_id: str = env("YC_SUBNET_ID", "dark-subnet")
    yc_zone: str = env("YC_ZONE", "ru-central1-a")
    yc_platform: str = env("YC_PLATFORM_ID", "standard-v3")
    yc_cores: int = env("YC_CORES", 2, _int)
    yc_memory_gb: int = env("YC_MEMORY_GB", 4, _int)
    yc_core_fraction: int = env("YC_CORE_FRACTION", 100, _int)
    yc_disk_gb: int = env("YC_DISK_GB", 30, _int)
    yc_disk_type: str = env("YC_DISK_TYPE", "network-ssd")
    yc_rpc_timeout: float = env("YC_RPC_TIMEOUT_SECS", 15.0, _pos_float)
    yc_security_group_ids: tuple[str, ...] = env(
        "YC_SECURITY_GROUP_IDS",
        (),
        _cloud_ids,
        doc="comma-separated; every VM's network interface gets them (only the control plane may "
        "reach the agent port); required in production",
    )
    yc_max_concurrent_operations: int = env(
        "YC_MAX_CONCURRENT_OPERATIONS",
        15,
        _pos_int,
        doc="cloud creates and deletes in flight at once, across every worker and host (the "
        "folder's concurrent-operations quota)",
    )
    vm_image: str | None = env("DARK_VM_IMAGE")
    deployment: str = env(
        "DARK_DEPLOYMENT",
        "local",
        doc="the `deployment` label; required in production, where the default could match "
        "another deployment's VMs",
    )

    agent_port: int = env("DARK_AGENT_PORT", 8080, _int)
    guest_network: str = env(
        "DARK_GUEST_NETWORK",
        "public",
        _guest_network,
        doc="public (the VM's NAT address) | internal (its VPC address): where guests are called",
    )
    guest_timeout: float = env("DARK_GUEST_TIMEOUT_SECS", 10.0, _pos_float)
    guest_boot_timeout: float = env("DARK_GUEST_BOOT_TIMEOUT", 600.0, _pos_float)
    guest_max_response_bytes: int = env("DARK_GUEST_MAX_RESPONSE_BYTES", 1_048_576, _int)
    adaptive_waits: bool = env(
        "DARK_ADAPTIVE_WAITS",
        True,
        _bool,
        doc="poll a create and a booting guest when recent ones finished, not every 1 s / 2 s",
    )

    api_bind: str = env("DARK_BIND", "127.0.0.1:8080", _bind)
    api_tokens: frozenset[str] = env("DARK_API_TOKENS", frozenset(), _tokens, secret=True)
    onboarding_bind: str = env("DARK_ONBOARDING_BIND", "127.0.0.1:8081", _bind)
    onboarding_tokens: frozenset[str] = env(
        "DARK_ONBOARDING_TOKENS", frozenset(), _tokens, secret=True
    )
    onboarding_public_url: str | None = env(
        "DARK_ONBOARDING_PUBLIC_URL",
        parse=_url,
        doc="the onboarding page's address as tenants reach it; invite links start with it "
        "(unset = http://DARK_ONBOARDING_BIND/)",
    )
    invite_ttl_secs: int = env(
        "DARK_INVITE_TTL_SECS", 7 * 24 * 3600, _pos_int, doc="how long an invite works"
    )
    max_instances_per_tenant: int = env("DARK_MAX_INSTANCES_PER_TENANT", 5, _nonneg_int)
    max_open_waits: int = env(
        "DARK_MAX_OPEN_WAITS",
        64,
        _pos_int,
        doc="GET /instances/<tenant>/<id>/wait calls open at once per gateway process; beyond it "
        "429 with Retry-After (the process gets this many threads plus a reserve)",
    )
    session_secret: str | None = env(
        "DARK_SESSION_SECRET",
        parse=_session_secret,
        doc="signs the dashboard's session cookie; unset in development = derived from the tokens",
        secret=True,
    )

    metrics_loopback_open: bool = env(
        "DARK_METRICS_LOOPBACK_OPEN",
        False,
        _bool,
        doc="/metrics without a token from loopback (development only; refused in production, "
        "and never behind a reverse proxy on the same host)",
    )

    reconcile_interval: int = env("RECONCILE_INTERVAL_SECS", 60, _nonneg_int)
    reconcile_orphan_grace: int = env("RECONCILE_ORPHAN_GRACE_SECS", 600, _nonneg_int)
    reconcile_stuck: int = env("RECONCILE_STUCK_SECS", 1800, _nonneg_int)
    reconcile_respawn_lost: bool = env("RECONCILE_RESPAWN_LOST", False, _bool)
    reconcile_dry_run: bool = env("RECONCILE_DRY_RUN", False, _bool)
    reconcile_max_destructive: int = env(
        "RECONCILE_MAX_DESTRUCTIVE",
        10,
        _nonneg_int,
        doc="orphan deletes + lost marks one run may take; above it the run takes none of them. "
        "0 = every one needs an operator's POST /reconcile {confirm_destructive}",
    )

    celery_visibility_timeout: int = env(
        "CELERY_VISIBILITY_TIMEOUT_SECS", 900, _int, doc="above the task limit and any countdown"
    )

    flower_basic_auth: str | None = env("FLOWER_BASIC_AUTH", doc="user:password", secret=True)
    flower_url: str | None = env("DARK_FLOWER_URL", parse=_url, doc="the dashboard links to it")
    log_level: str = env("DARK_LOG_LEVEL", "INFO")

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def onboarding_page_url(self) -> str:
        """The onboarding page, as invite links name it."""
        if self.onboarding_public_url:
            return self.onboarding_public_url.rstrip("/") + "/"
        return f"http://{self.onboarding_bind}/"


# --- which process reads what (docs/ARCHITECTURE.md#secrets) -------------------------------------
# Each process is given only the variables it reads (docker-compose.yml, devtools/run.py), and in
# production demands only its own secrets. A new setting goes into the sets of the processes that
# read it (tests/unit/test_settings.py fails on a setting no process reads).

_COMMON = frozenset({"DARK_ENV", "DARK_LOG_LEVEL"})
_BROKER_URL = frozenset({"REDIS_URL", "REDIS_CA_FILE", "REDIS_SENTINEL_MASTER"})
_BROKER = _BROKER_URL | {"CELERY_VISIBILITY_TIMEOUT_SECS"}
_DB = frozenset({"DATABASE_URL", "DARK_DB_REQUIRE_TLS"})
_VAULT = frozenset({"VAULT_ADDR", "VAULT_TOKEN", "VAULT_NAMESPACE", "VAULT_TIMEOUT_SECS"})
_YC = frozenset(
    {
        "YC_ENDPOINT",
        "YC_ROOT_CERT",
        "YC_IAM_TOKEN",
        "YC_SA_KEY_FILE",
        "YC_FOLDER_ID",
        "YC_SUBNET_ID",
        "YC_ZONE",
        "YC_PLATFORM_ID",
        # Which of a VM's addresses the compute adapter reports (and the worker calls the guest at).
        "DARK_GUEST_NETWORK",
        "YC_CORES",
        "YC_MEMORY_GB",
        "YC_CORE_FRACTION",
        "YC_DISK_GB",
        "YC_DISK_TYPE",
        "YC_RPC_TIMEOUT_SECS",
    }
)
_GUEST = frozenset({"DARK_AGENT_PORT", "DARK_GUEST_TIMEOUT_SECS", "DARK_GUEST_MAX_RESPONSE_BYTES"})

SERVICE_SETTINGS: dict[str, frozenset[str]] = {
    # The gateway: no Vault token, no cloud credentials.
    "api": _COMMON
    | _BROKER
    | _GUEST
    | _DB
    | {
        "DARK_BIND",
        "DARK_API_TOKENS",
        "DARK_SESSION_SECRET",
        "DARK_METRICS_LOOPBACK_OPEN",
        "DARK_FLOWER_URL",
        "DARK_MAX_INSTANCES_PER_TENANT",
        "DARK_MAX_OPEN_WAITS",
        # Invites: their lifetime, and the onboarding page their links name.
        "DARK_INVITE_TTL_SECS",
        "DARK_ONBOARDING_PUBLIC_URL",
        "DARK_ONBOARDING_BIND",
    },
    # Onboarding: its own Vault token (KV only); deleting a bundle needs Postgres, not transit.
    "onboarding": _COMMON
    | _VAULT
    | _DB
    | {"VAULT_KV_MOUNT", "DARK_ONBOARDING_BIND", "DARK_ONBOARDING_TOKENS"},
    "provisioner": _COMMON
    | _BROKER
    | _VAULT
    | _YC
    | _GUEST
    | _DB
    | {
        "VAULT_KV_MOUNT",
        "VAULT_TRANSIT_MOUNT",
        "DARK_BUNDLE_KEY",
        "DARK_VM_IMAGE",
        "DARK_DEPLOYMENT",
        "DARK_GUEST_BOOT_TIMEOUT",
        "DARK_ADAPTIVE_WAITS",
        "YC_SECURITY_GROUP_IDS",  # the VMs it creates carry them
        "YC_MAX_CONCURRENT_OPERATIONS",  # the operation budget its creates and deletes share
    },
    # Respawn only sends a message and bundle deletion is Postgres only: no Vault at all.
    "reconciler": _COMMON
    | _BROKER
    | _YC
    | _DB
    | {
        "DARK_DEPLOYMENT",
        "DARK_MAX_INSTANCES_PER_TENANT",
        "RECONCILE_INTERVAL_SECS",
        "RECONCILE_ORPHAN_GRACE_SECS",
        "RECONCILE_STUCK_SECS",
        "RECONCILE_RESPAWN_LOST",
        "RECONCILE_DRY_RUN",
        "RECONCILE_MAX_DESTRUCTIVE",
    },
    "beat": _COMMON | _BROKER | {"RECONCILE_INTERVAL_SECS"},
    # Flower: the broker and its basic auth, nothing else.
    "flower": _BROKER_URL | {"DARK_ENV", "FLOWER_BASIC_AUTH"},
    "migrate": _COMMON | _DB,
    # devtools/rotate_bundle_key.py, run by an operator with a token of the rotation policy.
    "rotate": _COMMON | _VAULT | _DB | {"VAULT_TRANSIT_MOUNT", "DARK_BUNDLE_KEY"},
}


def load_settings(
    environ: Mapping[str, str] | None = None, *, service: str | None = None
) -> Settings:
    """The settings of `environ` (default: the process's). `service`, a key of SERVICE_SETTINGS,
    limits the production check to that process's own requirements; None checks every process's
    (except a Vault token: no single token serves every process)."""
    if service is not None and service not in SERVICE_SETTINGS:
        raise ValueError(f"unknown service {service!r}")
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = f.metadata["env"]
        raw = environ.get(name, "")
        if raw.strip() == "":
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{name}: {exc}") from None
    settings = Settings(**values)
    _check(settings)
    # A real cloud is one reached through the system's roots (YC_ROOT_CERT unset): the simulator
    # always brings its own. There a VM with no configured image is refused at start-up, in any
    # DARK_ENV, rather than at the first provision.
    if service == "provisioner" and not settings.vm_image and not settings.yc_root_cert:
        raise SettingsError(
            "DARK_VM_IMAGE: required when the provisioner talks to a real cloud (YC_ROOT_CERT "
            "unset); only the simulator (YC_ROOT_CERT set) has a default image"
        )
    if settings.production:
        _check_production(settings, service, deployment_set="deployment" in values)
    return settings


def _check(s: Settings) -> None:
    if s.environment not in ("development", "production"):
        raise SettingsError("DARK_ENV: expected development or production")
    if s.api_tokens & s.onboarding_tokens:
        raise SettingsError("DARK_ONBOARDING_TOKENS: must not share a token with DARK_API_TOKENS")
    if s.celery_visibility_timeout <= 130:
        raise SettingsError(
            "CELERY_VISIBILITY_TIMEOUT_SECS: must exceed the 120 s task limit and 60 s countdowns"
        )
    if s.flower_basic_auth is not None and ":" not in s.flower_basic_auth:
        raise SettingsError("FLOWER_BASIC_AUTH: expected user:password")
    _check_redis_tls(s)
    _check_database_tls(s)


# TLS is never downgraded: a configuration that asks for it (a CA file, a root certificate,
# DARK_DB_REQUIRE_TLS) and a URL that would connect in plain text or without verifying the server
# is refused at start-up, not left to whatever the client library falls back to.
REDIS_SCHEMES = ("redis", "rediss", "sentinel")


def _check_redis_tls(s: Settings) -> None:
    scheme, sep, rest = s.redis_url.partition("://")
    if not sep or scheme not in REDIS_SCHEMES:
        raise SettingsError("REDIS_URL: expected a redis://, rediss:// or sentinel:// URL")
    if scheme == "sentinel" and not s.redis_sentinel_master:
        raise SettingsError("REDIS_SENTINEL_MASTER: required with a sentinel:// REDIS_URL")
    if scheme != "sentinel" and s.redis_sentinel_master:
        raise SettingsError("REDIS_SENTINEL_MASTER: only with a sentinel:// REDIS_URL")
    if s.redis_ca_file and scheme == "redis":
        raise SettingsError(
            "REDIS_URL: REDIS_CA_FILE is set, so Redis is reached over TLS: use rediss://, "
            "not redis://"
        )
    # Celery reads ssl_cert_reqs from a rediss:// URL's query: none or optional would connect to
    # whoever answers. The certificate is always verified (the CA file, or the system's roots).
    if "ssl_cert_reqs" in rest.lower() and "ssl_cert_reqs=cert_required" not in rest.lower():
        raise SettingsError("REDIS_URL: ssl_cert_reqs other than CERT_REQUIRED is refused")
    if s.redis_ca_file and not os.path.isfile(s.redis_ca_file):
        raise SettingsError(f"REDIS_CA_FILE: no such file: {s.redis_ca_file}")


_CONNINFO_PAIR_RE = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _conninfo_params(conninfo: str) -> dict[str, str]:
    """The parameters of a libpq URL (postgresql://...?k=v) or key=value string. Parsed here rather
    than by psycopg: the settings module is imported by the I/O-free layers."""
    if conninfo.startswith(("postgresql://", "postgres://")):
        return {k: v[-1] for k, v in parse_qs(urlsplit(conninfo).query).items()}
    return {
        key: value[1:-1].replace("\\'", "'") if value.startswith("'") else value
        for key, value in _CONNINFO_PAIR_RE.findall(conninfo)
    }


def _check_database_tls(s: Settings) -> None:
    params = _conninfo_params(s.database_url)
    sslmode = params.get("sslmode")
    rootcert = params.get("sslrootcert")
    if (s.db_require_tls or rootcert) and sslmode != "verify-full":
        why = "DARK_DB_REQUIRE_TLS is on" if s.db_require_tls else "it names an sslrootcert"
        raise SettingsError(
            f"DATABASE_URL: {why}, so it needs sslmode=verify-full (not {sslmode or 'unset'}): "
            "anything less connects without checking whose server it is, or in plain text"
        )
    if rootcert and rootcert != "system" and not os.path.isfile(str(rootcert)):
        raise SettingsError(f"DATABASE_URL: sslrootcert: no such file: {rootcert}")


def _check_production(s: Settings, service: str | None, *, deployment_set: bool) -> None:
    def needs(name: str) -> bool:
        return service is None or name in SERVICE_SETTINGS[service]

    if needs("DARK_API_TOKENS") and not s.api_tokens:
        raise SettingsError("DARK_API_TOKENS: required in production")
    if needs("DARK_ONBOARDING_TOKENS") and not s.onboarding_tokens:
        raise SettingsError("DARK_ONBOARDING_TOKENS: required in production")
    if needs("DARK_VM_IMAGE") and not s.vm_image:
        raise SettingsError("DARK_VM_IMAGE: required in production")
    if needs("DARK_SESSION_SECRET") and not s.session_secret:
        raise SettingsError("DARK_SESSION_SECRET: required in production (signs UI sessions)")
    if needs("FLOWER_BASIC_AUTH") and not s.flower_basic_auth:
        raise SettingsError("FLOWER_BASIC_AUTH: required in production (Flower is never open)")
    if needs("YC_SA_KEY_FILE") and not (s.yc_iam_token or s.yc_sa_key_file):
        raise SettingsError("YC_SA_KEY_FILE: required in production (or YC_IAM_TOKEN)")
    if needs("DARK_METRICS_LOOPBACK_OPEN") and s.metrics_loopback_open:
        raise SettingsError(
            "DARK_METRICS_LOOPBACK_OPEN: must be off in production (scrape with a token)"
        )
    if needs("YC_SECURITY_GROUP_IDS") and not s.yc_security_group_ids:
        # Without one, a VM's agent port answers whoever reaches its address, and export hands out
        # the tenant's identity.
        raise SettingsError(
            "YC_SECURITY_GROUP_IDS: required in production (only the control plane may reach the "
            "agent port)"
        )
    if service is not None and needs("VAULT_TOKEN") and not s.vault_token:
        raise SettingsError("VAULT_TOKEN: required in production (this service's own token)")
    if needs("DARK_DEPLOYMENT") and not deployment_set:
        # Reconcile owns every VM labelled with this deployment: a default shared by two
        # deployments in one folder would have each delete the other's fleet as orphans.
        raise SettingsError("DARK_DEPLOYMENT: required in production (reconcile owns its VMs)")


def env_names() -> list[str]:
    return [f.metadata["env"] for f in fields(Settings)]
