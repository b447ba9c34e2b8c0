"""`python -m sim`: the YC Compute simulator with a dark-agent on every running VM.

Prints one JSON line with everything a client needs once it is serving, then serves until SIGTERM
or SIGINT. Logs go to stderr, so stdout stays machine-readable.
"""

import argparse
import json
import logging
import secrets
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path

from sim import admin, yc
from sim.agent import GuestFleet
from sim.certs import write_self_signed
from sim.quotas import DEFAULT_CONCURRENT_OPERATIONS, Limits
from sim.world import World

log = logging.getLogger("sim")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__)
    parser.add_argument("--state-dir", help="where the TLS certificate goes (default: a temp dir)")
    parser.add_argument(
        "--operation-delay", type=float, default=0.3, help="seconds a create/delete takes"
    )
    parser.add_argument(
        "--boot-delay", type=float, default=0.5, help="seconds a guest answers 503 after RUNNING"
    )
    parser.add_argument("--agent-port", type=int, default=0, help="guest API port (0: pick one)")
    parser.add_argument("--iam-token", help="the bearer token to accept (default: random)")
    parser.add_argument("--yc-port", type=int, default=0, help="gRPC port (0: pick one)")
    parser.add_argument(
        "--security-groups",
        default="",
        help="comma-separated ids of the security groups that exist (more via the admin API)",
    )
    parser.add_argument("--admin-port", type=int, default=0, help="admin HTTP port (0: pick one)")
    quota = parser.add_argument_group("quotas (0: no limit; more via the admin API)")
    quota.add_argument(
        "--quota-operations",
        type=int,
        default=DEFAULT_CONCURRENT_OPERATIONS,
        help="concurrent operations per folder (YC's default: %(default)s)",
    )
    quota.add_argument("--quota-instances", type=int, default=0, help="instances per cloud")
    quota.add_argument("--quota-cores", type=int, default=0, help="vCPUs per cloud")
    quota.add_argument("--quota-memory-gb", type=int, default=0, help="RAM per cloud, GB")
    quota.add_argument("--rate-limit", type=float, default=0, help="API requests per second")
    return parser.parse_args(argv)


def limits(args: argparse.Namespace) -> Limits:
    return Limits(
        operations=args.quota_operations or None,
        instances=args.quota_instances or None,
        cores=args.quota_cores or None,
        memory_gb=args.quota_memory_gb or None,
        rate=args.rate_limit or None,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="yc-sim-"))
    cert, key = write_self_signed(state_dir)
    token = args.iam_token or f"t1.sim-{secrets.token_urlsafe(24)}"

    # Every guest listens on the same port on its own address: choose it once, up front.
    fleet = GuestFleet(args.agent_port or _free_port(), args.boot_delay)
    groups = tuple(g.strip() for g in args.security_groups.split(",") if g.strip())
    world = World(fleet, args.operation_delay, security_groups=groups, limits=limits(args))
    grpc_server, yc_port = yc.serve(world, token, cert, key, args.yc_port)
    admin_server, admin_thread = admin.serve(admin.create_app(world, fleet), args.admin_port)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    info = {
        "yc_endpoint": f"localhost:{yc_port}",
        "yc_root_cert": str(cert),
        "yc_iam_token": token,
        "agent_port": fleet.agent_port,
        "admin_url": f"http://127.0.0.1:{admin_server.server_port}",
    }
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    log.info("serving YC API on %s, admin on %s", info["yc_endpoint"], info["admin_url"])

    stop.wait()
    log.info("stopping")
    admin_server.shutdown()
    admin_thread.join(5)
    grpc_server.stop(grace=1).wait(5)
    world.close()
    fleet.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
