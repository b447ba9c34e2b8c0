"""`dark`: the gateway's REST API for people (tables) and scripts (`--json` on every command).

Errors print the API's message and exit 1. No command prints a token, except `dark tenants invite`,
whose purpose is to hand the tenant a link that carries their onboarding token.
"""

import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import click

from cli import config
from cli.client import Client

STATUSES = (
    "pending",
    "provisioning",
    "initializing",
    "ready",
    "tearing_down",
    "retired",
    "failed",
    "lost",
)
# Statuses an instance does not leave on its own.
SETTLED = frozenset({"failed", "retired", "lost"})
# The longest one wait call may take on the gateway.
MAX_WAIT_CALL_SECS = 60


def main() -> None:
    cli(prog_name="dark")


def _client() -> Client:
    try:
        return Client(config.resolve())
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")(command)


def _emit_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _table(rows: Iterable[Iterable[object]], headers: Iterable[str]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    header = list(headers)
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    for row in [header, *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _short_time(iso: str | None) -> str:
    """An ISO-8601 UTC time as YYYY-MM-DD HH:MM:SS (what a table has room for)."""
    return iso[:19].replace("T", " ") if iso else "-"


def _event_line(event: dict) -> str:
    moved = f"{event['from']} → {event['to']}" if event.get("from") else f"→ {event['to']}"
    reason = f"  {event['reason']}" if event.get("reason") else ""
    return f"{_short_time(event['at'])}  {moved}{reason}"


def _needs_wait(seconds: float) -> None:
    if seconds <= 0:
        raise click.BadParameter("must be more than zero", param_hint="--timeout")


@click.group(help=__doc__.split("\n\n")[0] if __doc__ else None)
def cli() -> None:
    pass


# --- login -----------------------------------------------------------------------------------


@cli.command()
@click.option("--url", help=f"the gateway (default: make run's, else {config.DEFAULT_URL})")
@click.option("--token-stdin", is_flag=True, help="read the operator token from standard input")
@_json_option
def login(url: str | None, token_stdin: bool, as_json: bool) -> None:
    """Check a gateway URL and operator token, then keep them in the config file (0600)

    With no token given, in a checkout running `make run` the token it generated is used
    (.run/tokens.json); otherwise DARK_TOKEN, else a prompt that does not echo it.
    """
    local = config.discover_local()
    if token_stdin:
        token, source = sys.stdin.readline().strip(), "standard input"
    elif env := config.from_environment():
        token, source = env.token, env.source
    elif local is not None:
        token, source = local.token, local.source
    else:
        token, source = click.prompt("operator token", hide_input=True).strip(), "prompt"
    if not token:
        raise click.ClickException("no token given")
    url = url or (local.url if local else None) or config.DEFAULT_URL
    target = config.Target(url=url.rstrip("/"), token=token, source=source)
    Client(target).tenants()  # a protected call: a wrong token or URL fails here, nothing saved
    path = config.save(target)
    if as_json:
        _emit_json({"url": target.url, "config": str(path), "token_from": source})
    else:
        click.echo(f"logged in to {target.url} (token from {source}); saved in {path}")


# --- tenants ---------------------------------------------------------------------------------


@cli.group()
def tenants() -> None:
    """Tenants: list them, invite one to onboard"""


@tenants.command("ls")
@_json_option
def tenants_ls(as_json: bool) -> None:
    """Tenants, whether each is onboarded, its live instances and its invite"""
    items = _client().tenants()
    if as_json:
        _emit_json({"items": items})
        return
    _table(
        ((t["name"], t["onboarded"], t["live_instances"], t["invite"]["state"]) for t in items),
        ("NAME", "ONBOARDED", "LIVE", "INVITE"),
    )


@tenants.command("invite")
@click.argument("tenant")
@_json_option
def tenants_invite(tenant: str, as_json: bool) -> None:
    """Issue TENANT's invite and print its link (which carries the tenant's onboarding token)

    A new invite revokes the previous one. The link is shown this once: hand it to the tenant.
    """
    issued = _client().invite(tenant)
    if as_json:
        _emit_json(issued)
        return
    click.echo(f"invite for {tenant}, valid until {_short_time(issued['expires_at'])} UTC")
    click.echo("hand this link to the tenant (it holds their onboarding token, shown this once):")
    click.echo(issued["url"])


# --- instances -------------------------------------------------------------------------------


@cli.command("ls")
@click.option("--tenant", help="only this tenant's instances")
@click.option("--status", type=click.Choice(STATUSES), help="only instances in this status")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@click.option("--cursor", help="the next page: the cursor the previous page printed")
@_json_option
def ls(tenant: str | None, status: str | None, limit: int, cursor: str | None, as_json: bool):
    """Instances, newest first"""
    page = _client().instances(tenant=tenant, status=status, limit=limit, cursor=cursor)
    if as_json:
        _emit_json(page)
        return
    _table(
        (
            (
                i["id"],
                i["tenant"],
                i["status"],
                i["address"],
                _short_time(i["updated_at"]),
                i["reason"],
            )
            for i in page["items"]
        ),
        ("ID", "TENANT", "STATUS", "ADDRESS", "UPDATED (UTC)", "REASON"),
    )
    if page.get("next_cursor"):
        click.echo(f"more: dark ls --cursor {page['next_cursor']}", err=True)


@cli.command()
@click.argument("tenant")
@click.option("--wait", is_flag=True, help="follow it to ready, printing each transition")
@click.option("--timeout", type=float, default=600, show_default=True, help="seconds, with --wait")
@click.option("--idempotency-key", help="the same key again answers with the same instance")
@_json_option
def create(
    tenant: str, wait: bool, timeout: float, idempotency_key: str | None, as_json: bool
) -> None:
    """Provision a VM for TENANT"""
    client = _client()
    accepted = client.create(tenant, idempotency_key)
    instance = accepted["instance"]
    if not wait:
        if as_json:
            _emit_json(accepted)
        else:
            click.echo(f"instance {instance['id']} of {tenant}: {instance['status']}")
            click.echo(f"follow it: dark events {tenant} {instance['id']} -f")
        return
    _needs_wait(timeout)
    if not as_json:
        click.echo(f"instance {instance['id']} of {tenant}")
    _finish(client, tenant, instance["id"], {"ready"}, timeout, as_json)


@cli.command()
@click.argument("tenant")
@click.argument("instance_id")
@_json_option
def show(tenant: str, instance_id: str, as_json: bool) -> None:
    """An instance, its entry points and a live look at its guest"""
    detail = _client().show(tenant, instance_id)
    if as_json:
        _emit_json(detail)
        return
    instance, guest = detail["instance"], detail["guest"]
    rows = [
        ("id", instance["id"]),
        ("tenant", instance["tenant"]),
        ("status", instance["status"]),
        ("reason", instance["reason"]),
        ("vm", instance["vm_name"]),
        ("provider id", instance["provider_id"]),
        ("address", instance["address"]),
        ("created", _short_time(instance["created_at"]) + " UTC"),
        ("updated", _short_time(instance["updated_at"]) + " UTC"),
    ]
    for name, url in (detail.get("entry_points") or {}).items():
        rows.append((name.removesuffix("_url"), url))
    health = guest.get("health") or {}
    seen = "reachable" if guest["reachable"] else "unreachable"
    rows.append(("guest", f"{seen} {health.get('status', '')}".strip()))
    if guest.get("error"):
        rows.append(("guest error", guest["error"]))
    if detail.get("ssh_pubkey"):
        rows.append(("ssh key", detail["ssh_pubkey"]))
    for name, value in rows:
        click.echo(f"{name + ':':<13} {_cell(value)}")


@cli.command()
@click.argument("tenant")
@click.argument("instance_id")
@click.option("-f", "--follow", is_flag=True, help="keep printing until it settles")
@click.option("--timeout", type=float, default=3600, show_default=True, help="seconds, with -f")
@_json_option
def events(tenant: str, instance_id: str, follow: bool, timeout: float, as_json: bool) -> None:
    """An instance's lifecycle timeline (JSON: one event per line with -f)"""
    client = _client()
    if not follow:
        items = client.events(tenant, instance_id)
        if as_json:
            _emit_json({"items": items})
        else:
            for event in items:
                click.echo(_event_line(event))
        return
    _needs_wait(timeout)
    _follow(client, tenant, instance_id, set(), timeout, _printer(as_json))


@cli.command()
@click.argument("tenant")
@click.argument("instance_id")
@click.option(
    "--mode",
    type=click.Choice(["keep", "retire"]),
    default="keep",
    show_default=True,
    help="retire: also delete the tenant's bundle when this is its last live VM",
)
@click.option("--wait", is_flag=True, help="follow it to retired, printing each transition")
@click.option("--timeout", type=float, default=600, show_default=True, help="seconds, with --wait")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@_json_option
def rm(
    tenant: str, instance_id: str, mode: str, wait: bool, timeout: float, yes: bool, as_json: bool
) -> None:
    """Tear an instance's VM down"""
    if not yes:
        click.confirm(f"tear down {instance_id} of {tenant} (mode {mode})?", abort=True, err=True)
    client = _client()
    accepted = client.remove(tenant, instance_id, mode)
    if not wait:
        if as_json:
            _emit_json(accepted)
        else:
            click.echo(f"instance {instance_id} of {tenant}: {accepted['instance']['status']}")
        return
    _needs_wait(timeout)
    _finish(client, tenant, instance_id, {"retired"}, timeout, as_json)


@cli.command()
@click.argument("tenant")
@click.argument("instance_id")
@_json_option
def heal(tenant: str, instance_id: str, as_json: bool) -> None:
    """Drive the guest's self-repair and print its report"""
    report = _client().heal(tenant, instance_id)
    if as_json:
        _emit_json(report)
    else:
        click.echo(json.dumps(report.get("heal"), indent=2) if report.get("heal") else "no report")
    if report.get("error"):
        raise click.ClickException(f"heal: {report['error']}")


# --- reconcile -------------------------------------------------------------------------------


@cli.command()
@click.option("--dry-run", is_flag=True, help="decide, record, act on nothing")
@click.option("--wait", is_flag=True, help="wait for the run and print it")
@click.option("--timeout", type=float, default=300, show_default=True, help="seconds, with --wait")
@_json_option
def reconcile(dry_run: bool, wait: bool, timeout: float, as_json: bool) -> None:
    """Run a reconcile now"""
    client = _client()
    task_id = client.reconcile(dry_run)["task_id"]
    if not wait:
        if as_json:
            _emit_json({"task_id": task_id})
        else:
            click.echo(f"reconcile queued (task {task_id}); see it with: dark runs")
        return
    _needs_wait(timeout)
    deadline = time.monotonic() + timeout
    while not client.task(task_id)["ready"]:
        if time.monotonic() > deadline:
            raise click.ClickException(f"the reconcile (task {task_id}) did not finish in time")
        time.sleep(0.5)
    latest = client.runs(1)
    run = latest[0] if latest else None
    if as_json:
        _emit_json({"task_id": task_id, "run": run})
    elif run is None:
        click.echo("the reconcile finished without recording a run (another one was going)")
    else:
        _print_runs([run])
        for action in run.get("actions") or []:
            click.echo(f"  {action['kind']}: {action.get('detail') or ''} → {action.get('result')}")


@cli.command()
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@_json_option
def runs(limit: int, as_json: bool) -> None:
    """The latest reconcile runs, newest first"""
    items = _client().runs(limit)
    if as_json:
        _emit_json({"items": items})
    else:
        _print_runs(items)


def _print_runs(items: list[dict]) -> None:
    _table(
        (
            (
                r["id"],
                _short_time(r["started_at"]),
                r["trigger"],
                r["dry_run"],
                r["outcome"],
                " ".join(f"{k}={v}" for k, v in sorted((r.get("counts") or {}).items())),
            )
            for r in items
        ),
        ("ID", "STARTED (UTC)", "TRIGGER", "DRY RUN", "OUTCOME", "COUNTS"),
    )


# --- following an instance -------------------------------------------------------------------


def _printer(as_json: bool) -> Callable[[dict], None]:
    if as_json:
        return lambda event: click.echo(json.dumps(event, sort_keys=True))
    return lambda event: click.echo(_event_line(event))


def _follow(
    client: Client,
    tenant: str,
    instance_id: str,
    until: set[str],
    timeout: float,
    on_event: Callable[[dict], None],
) -> tuple[dict, list[dict]]:
    """Print each event as it happens until the instance is in `until` or settles; the instance as
    last seen and its events. Each round holds one wait on the gateway for any status but the
    current one, so a transition is seen as it happens, without polling."""
    deadline = time.monotonic() + timeout
    printed = 0
    status: str | None = None
    while True:
        remaining = deadline - time.monotonic()
        wanted = [s for s in STATUSES if s != status]
        hold = 0.0 if status is None else max(0.0, min(MAX_WAIT_CALL_SECS, remaining))
        instance = client.wait(tenant, instance_id, wanted, hold)["instance"]
        timeline = client.events(tenant, instance_id)
        for event in timeline[printed:]:
            on_event(event)
        printed = len(timeline)
        status = instance["status"]
        if status in until or status in SETTLED or remaining <= 0:
            return instance, timeline


def _finish(
    client: Client,
    tenant: str,
    instance_id: str,
    until: set[str],
    timeout: float,
    as_json: bool,
) -> None:
    """Follow the instance to `until`; then its entry points, or a failure naming its state."""
    collected: list[dict] = []
    on_event = collected.append if as_json else _printer(False)
    instance, timeline = _follow(client, tenant, instance_id, until, timeout, on_event)
    entry_points = None
    if instance["status"] == "ready":
        entry_points = client.show(tenant, instance_id).get("entry_points")
    if as_json:
        _emit_json({"instance": instance, "events": timeline, "entry_points": entry_points})
    elif entry_points:
        for name, url in entry_points.items():
            click.echo(f"{name.removesuffix('_url'):<9} {url}")
    if instance["status"] not in until:
        reason = f": {instance['reason']}" if instance.get("reason") else ""
        raise click.ClickException(
            f"instance {instance_id} is {instance['status']}{reason}"
            + ("" if instance["status"] in SETTLED else " (timed out waiting)")
        )
