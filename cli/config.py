"""Where `dark` finds the gateway and its token.

In order: DARK_URL / DARK_TOKEN from the environment; the file `dark login` wrote
($XDG_CONFIG_HOME/dark/config.json, else ~/.config/dark/config.json, mode 0600); in development,
`make run`'s own (.run/endpoints.json and .run/tokens.json in this directory or one above it).
"""

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    source: str  # where it came from, for messages (never the token itself)

    def __repr__(self) -> str:  # a token never reaches a traceback or a log
        return f"Target(url={self.url!r}, source={self.source!r})"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "").strip() or str(Path.home() / ".config")
    return Path(base) / "dark" / "config.json"


def load_saved() -> Target | None:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problem = exc.__class__.__name__
        raise ConfigError(f"cannot read {path} ({problem}); run `dark login`") from None
    if not isinstance(data, dict) or not data.get("url") or not data.get("token"):
        raise ConfigError(f"{path} has no url and token; run `dark login`")
    return Target(url=str(data["url"]), token=str(data["token"]), source=str(path))


def save(target: Target) -> Path:
    """Write url and token to the config file, 0600, atomically (a reader sees the old file or the
    new one, never half of one, and never a moment of wider permissions)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:  # mkstemp creates it 0600
            json.dump({"url": target.url, "token": target.token}, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def run_directory(start: Path | None = None) -> Path | None:
    """`make run`'s .run/ directory in `start` (default: the working directory) or above it."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / ".run" / "tokens.json").is_file():
            return directory / ".run"
    return None


def discover_local() -> Target | None:
    """`make run`'s gateway and generated operator token, when this is a checkout running it."""
    run = run_directory()
    if run is None:
        return None
    try:
        tokens = json.loads((run / "tokens.json").read_text())
    except (OSError, ValueError):
        return None
    token = str(tokens.get("DARK_API_TOKENS", "")).split(",")[0].strip()
    if not token:  # the operator gave DARK_API_TOKENS themselves: make run did not generate one
        return None
    url = DEFAULT_URL
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        url = str(json.loads((run / "endpoints.json").read_text())["gateway"])
    return Target(url=url, token=token, source=str(run / "tokens.json"))


def from_environment() -> Target | None:
    token = os.environ.get("DARK_TOKEN", "").strip()
    if not token:
        return None
    url = os.environ.get("DARK_URL", "").strip() or DEFAULT_URL
    return Target(url=url, token=token, source="DARK_TOKEN")


def resolve() -> Target:
    target = from_environment() or load_saved() or discover_local()
    if target is None:
        raise ConfigError("not logged in: run `dark login` (or set DARK_URL and DARK_TOKEN)")
    return target


class ConfigError(Exception):
    pass
