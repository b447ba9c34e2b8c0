"""A gateway alone as a real process (gunicorn with its production config), for tests of HTTP
behaviour that need no worker: the rows they look at are written straight into the registry."""

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support.processes import VENV_BIN, free_port, spawn, stop_process, wait_until


@dataclass(frozen=True)
class Gateway:
    url: str
    token: str
    log_path: Path

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, *, timeout: float = 15, **kwargs) -> requests.Response:
        return requests.get(self.url + path, headers=self.headers(), timeout=timeout, **kwargs)


@contextlib.contextmanager
def running_gateway(
    workdir: Path, database_url: str, redis_url: str, **env: str
) -> Iterator[Gateway]:
    """gunicorn -c services/api/gunicorn.conf.py on a free port with an operator token of its own;
    `env` adds settings (DARK_MAX_OPEN_WAITS=...)."""
    token = "op-" + secrets.token_hex(16)
    bind = f"127.0.0.1:{free_port()}"
    log_path = workdir / f"gateway-{secrets.token_hex(3)}.log"
    proc = spawn(
        [
            str(VENV_BIN / "gunicorn"),
            "-c",
            "services/api/gunicorn.conf.py",
            "--bind",
            bind,
            "services.api.wsgi:app",
        ],
        env={
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DARK_API_TOKENS": token,
            "DARK_BIND": bind,
            "PYTHONUNBUFFERED": "1",
            **env,
        },
        log_path=log_path,
    )
    url = f"http://{bind}"
    try:
        wait_until(lambda: requests.get(url + "/health", timeout=1).ok, 30, what="gateway")
        yield Gateway(url=url, token=token, log_path=log_path)
    finally:
        stop_process(proc)
