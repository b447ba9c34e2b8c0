"""The gateway's REST API as `dark` calls it: one method per call, errors as the API words them."""

from typing import Any
from urllib.parse import quote

import click
import requests

from cli.config import Target

# A wait is held up to 60 s by the gateway; the client allows it that and a margin.
WAIT_MARGIN_SECS = 15
TIMEOUT_SECS = 15


class ApiFailure(click.ClickException):
    """The API said no (or could not be reached): its message, and a non-zero exit."""

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def format_message(self) -> str:
        return f"{self.message} ({self.code}, HTTP {self.status})" if self.status else self.message


def _failure(resp: requests.Response) -> ApiFailure:
    try:
        error = resp.json()["error"]
        message, code = str(error["message"]), str(error["code"])
        fields = (error.get("details") or {}).get("fields")
    except (ValueError, KeyError, TypeError):
        return ApiFailure(f"the gateway answered {resp.status_code}", status=resp.status_code)
    if isinstance(fields, dict):
        message += ": " + "; ".join(f"{name}: {_words(why)}" for name, why in fields.items())
    return ApiFailure(message, status=resp.status_code, code=code)


def _words(why: object) -> str:
    if isinstance(why, list):
        return " ".join(map(str, why))
    return str(why)


def segment(value: str) -> str:
    return quote(value, safe="")


class Client:
    def __init__(self, target: Target) -> None:
        self.url = target.url.rstrip("/")
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {target.token}"
        self._session.headers["User-Agent"] = "dark-cli"

    def call(
        self,
        method: str,
        path: str,
        *,
        timeout: float = TIMEOUT_SECS,
        expect: tuple[int, ...] = (200,),
        **kwargs: Any,
    ) -> Any:
        try:
            resp = self._session.request(method, self.url + path, timeout=timeout, **kwargs)
        except requests.RequestException as exc:
            raise ApiFailure(
                f"cannot reach the gateway at {self.url} ({exc.__class__.__name__})"
            ) from None
        if resp.status_code not in expect:
            raise _failure(resp)
        return resp.json() if resp.content else None

    # --- instances --------------------------------------------------------------------------

    def instances(self, **params: Any) -> dict:
        return self.call("GET", "/instances", params={k: v for k, v in params.items() if v})

    def create(self, tenant: str, idempotency_key: str | None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.call(
            "POST", "/instances", json={"tenant": tenant}, headers=headers, expect=(202,)
        )

    def show(self, tenant: str, instance_id: str) -> dict:
        return self.call("GET", f"/instances/{segment(tenant)}/{segment(instance_id)}")

    def events(self, tenant: str, instance_id: str) -> list[dict]:
        path = f"/instances/{segment(tenant)}/{segment(instance_id)}/events"
        return list(self.call("GET", path)["items"])

    def wait(self, tenant: str, instance_id: str, statuses: list[str], timeout: float) -> dict:
        return self.call(
            "GET",
            f"/instances/{segment(tenant)}/{segment(instance_id)}/wait",
            params={"status": ",".join(statuses), "timeout": f"{timeout:.1f}"},
            timeout=timeout + WAIT_MARGIN_SECS,
        )

    def remove(self, tenant: str, instance_id: str, mode: str) -> dict:
        path = f"/instances/{segment(tenant)}/{segment(instance_id)}"
        return self.call("DELETE", path, params={"mode": mode}, expect=(202,))

    def heal(self, tenant: str, instance_id: str) -> dict:
        path = f"/instances/{segment(tenant)}/{segment(instance_id)}/heal"
        return self.call("POST", path, timeout=60)

    # --- tenants, reconcile -------------------------------------------------------------------

    def tenants(self) -> list[dict]:
        return list(self.call("GET", "/tenants")["items"])

    def invite(self, tenant: str) -> dict:
        return self.call("POST", f"/tenants/{segment(tenant)}/invites", expect=(201,))

    def reconcile(self, dry_run: bool) -> dict:
        return self.call("POST", "/reconcile", json={"dry_run": dry_run}, expect=(202,))

    def task(self, task_id: str) -> dict:
        return self.call("GET", f"/tasks/{segment(task_id)}")

    def runs(self, limit: int) -> list[dict]:
        return list(self.call("GET", "/reconcile/runs", params={"limit": limit})["items"])
