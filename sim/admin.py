"""The simulator's admin HTTP API: configure, inject faults, inspect, and act behind our back."""

import re
import threading
import time
from typing import Any

import grpc
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from sim.agent import GuestFleet
from sim.model import ApiError, Vm, parse_fault
from sim.world import World

_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
}
MAX_BULK = 100_000


def _error(status: int, code: str, message: str):
    return jsonify({"error": {"code": code, "message": message}}), status


def _body(*, allow_list: bool = False) -> Any:  # a dict, or a list when allowed
    body = request.get_json(silent=True)
    if not isinstance(body, dict) and not (allow_list and isinstance(body, list)):
        raise ApiError("INVALID_ARGUMENT", "expected a JSON object")
    return body


def _vm_template(body: dict) -> dict:
    labels = body.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ApiError("INVALID_ARGUMENT", "labels must map strings to strings")
    folder_id = body.get("folder_id")
    if not isinstance(folder_id, str) or not folder_id:
        raise ApiError("INVALID_ARGUMENT", "folder_id is required")
    age = body.get("age_secs", 0)
    if not isinstance(age, int | float) or age < 0:
        raise ApiError("INVALID_ARGUMENT", "age_secs must be a number of seconds, zero or more")
    template = {
        "folder_id": folder_id,
        "labels": labels,
        "status": body.get("status", "RUNNING"),
        "created_at": time.time() - age,
    }
    for optional in ("zone_id", "platform_id"):
        if optional in body:
            template[optional] = str(body[optional])
    return template


def create_app(world: World, fleet: GuestFleet) -> Flask:
    app = Flask("sim.admin")
    app.register_blueprint(fleet.blueprint(), url_prefix="/guests")

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return _error(_HTTP_STATUS.get(exc.code, 400), exc.code.lower(), exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _error(exc.code or 500, exc.name.lower().replace(" ", "_"), exc.description or "")

    @app.get("/health")
    def health():
        return jsonify({"status": "ok"})

    @app.get("/cloud/config")
    def get_config():
        return jsonify({"operation_delay": world.operation_delay})

    @app.post("/cloud/config")
    def set_config():
        delay = _body().get("operation_delay")
        if not isinstance(delay, int | float) or delay < 0:
            raise ApiError("INVALID_ARGUMENT", "operation_delay must be seconds, zero or more")
        world.operation_delay = float(delay)
        return jsonify({"operation_delay": world.operation_delay})

    @app.get("/cloud/quotas")
    def get_quotas():
        """Limits (null: none), usage, RESOURCE_EXHAUSTED answers given and the most operations
        ever in flight in one folder (both zeroed by /reset)."""
        return jsonify(world.quota_report())

    @app.post("/cloud/quotas")
    def set_quotas():
        """Change some limits: {"operations", "instances", "cores", "memory_gb": int | null,
        "rate": requests per second | null}; the others keep their values."""
        try:
            world.set_limits(_body())
        except ValueError as exc:
            raise ApiError("INVALID_ARGUMENT", str(exc)) from None
        return jsonify(world.quota_report())

    @app.get("/cloud/faults")
    def list_faults():
        return jsonify(world.faults())

    @app.post("/cloud/faults")
    def add_faults():
        body = _body(allow_list=True)
        try:
            faults = [
                parse_fault(raw if isinstance(raw, dict) else {}, grpc.StatusCode.__members__)
                for raw in (body if isinstance(body, list) else [body])
            ]
        except ValueError as exc:
            raise ApiError("INVALID_ARGUMENT", str(exc)) from None
        world.add_faults(faults)
        return jsonify(world.faults())

    @app.delete("/cloud/faults")
    def clear_faults():
        world.clear_faults()
        return "", 204

    @app.get("/cloud/calls")
    def calls():
        return jsonify(world.calls())

    @app.get("/cloud/log")
    def events():
        since = request.args.get("since", "0")
        if not since.isdigit():
            raise ApiError("INVALID_ARGUMENT", "since must be an index, zero or more")
        return jsonify(world.events(int(since)))

    @app.get("/cloud/vms")
    def list_vms():
        labels = {k[6:]: v for k, v in request.args.items() if k.startswith("label.")}
        vms = world.vms(request.args.get("folder_id") or None, labels)
        return jsonify([vm.to_json() for vm in vms])

    @app.post("/cloud/vms")
    def add_vms():
        body = _body()
        template = _vm_template(body)
        if "count" not in body:
            name, guest = str(body.get("name", "")), bool(body.get("guest", True))
            vm = Vm(id="", name=name, guest=guest, **template)
            return jsonify(world.add_vms([vm])[0].to_json()), 201
        count = body["count"]
        if not isinstance(count, int) or not 0 < count <= MAX_BULK:
            raise ApiError("INVALID_ARGUMENT", f"count must be 1..{MAX_BULK}")
        prefix = str(body.get("name_prefix", "sim-vm-"))
        guest = bool(body.get("guest", False))
        vms = [Vm(id="", name=f"{prefix}{i}", guest=guest, **template) for i in range(count)]
        return jsonify([vm.to_json() for vm in world.add_vms(vms)]), 201

    @app.post("/cloud/vms/<vm_id>/address")
    def move_address(vm_id: str):
        """Re-address a running VM behind our back: {"network": "public" | "internal",
        "address": optional loopback address no VM holds; default a fresh one}."""
        body = _body()
        address = body.get("address")
        if address is not None and not isinstance(address, str):
            raise ApiError("INVALID_ARGUMENT", "address must be a string")
        vm = world.move_address(vm_id, str(body.get("network", "public")), address)
        return jsonify(vm.to_json())

    @app.get("/cloud/security-groups")
    def list_security_groups():
        return jsonify(world.security_groups())

    @app.post("/cloud/security-groups")
    def add_security_group():
        group_id = _body().get("id")
        if group_id is not None and not (
            isinstance(group_id, str) and re.fullmatch(r"[a-z][a-z0-9-]{1,49}", group_id)
        ):
            raise ApiError("INVALID_ARGUMENT", "id must be a lowercase cloud id")
        return jsonify({"id": world.add_security_group(group_id)}), 201

    @app.delete("/cloud/vms/<vm_id>")
    def remove_vm(vm_id: str):
        return jsonify(world.remove_vms(vm_id=vm_id)[0].to_json())

    @app.delete("/cloud/vms")
    def remove_folder():
        folder_id = request.args.get("folder_id")
        if not folder_id:
            raise ApiError("INVALID_ARGUMENT", "folder_id is required")
        return jsonify({"removed": len(world.remove_vms(folder_id=folder_id))})

    @app.post("/reset")
    def reset():
        world.reset()
        fleet.clear_faults()
        return jsonify({"status": "reset"})

    return app


def serve(app: Flask, port: int) -> tuple[BaseWSGIServer, threading.Thread]:
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="sim-admin", daemon=True)
    thread.start()
    return server, thread
