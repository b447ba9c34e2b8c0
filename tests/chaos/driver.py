"""Run a round's plan against the chaos stack, recording everything the invariants need.

Each step starts at its planned second on a thread of its own, so a slow step (a request retried
through an outage, a restart) never delays the next one. The client behaves as documented: a 503
is retried after its Retry-After with the same Idempotency-Key. Every HTTP answer the client gets is
recorded; the invariants judge them afterwards.
"""

import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from tests.chaos.harness import ChaosStack
from tests.chaos.scenario import FAULT_KINDS, Step

CLIENT_PATIENCE_SECS = 45  # how long a client keeps retrying 503s and refused connections
REF_WAIT_SECS = 60  # how long a step aimed at a ref waits for that provision's answer


@dataclass(frozen=True)
class Answer:
    method: str
    path: str
    status: int  # 0: no HTTP answer at all (connection refused, timeout)
    retry_after: str | None
    body: str


@dataclass
class RoundLog:
    """What happened in a round, as the client saw it."""

    answers: list[Answer] = field(default_factory=list)
    instances: dict[int, dict] = field(default_factory=dict)  # ref -> {"id", "tenant"}
    refused: dict[int, int] = field(default_factory=dict)  # ref -> final HTTP status
    teardowns_accepted: set[str] = field(default_factory=set)  # instance ids
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    faults: int = 0


class Driver:
    def __init__(self, chaos: ChaosStack, rng, *, echo=print) -> None:
        self.chaos = chaos
        self.rng = rng
        self.echo = echo
        self.log = RoundLog()
        self._lock = threading.Lock()
        self._answered: dict[int, threading.Event] = {}

    # --- the client -----------------------------------------------------------------------------

    def request(self, method: str, path: str, *, gateway: int = 0, **kwargs) -> Answer:
        url = self.chaos.gateways[gateway % len(self.chaos.gateways)] + path
        headers = {**self.chaos.headers, **kwargs.pop("headers", {})}
        deadline = time.monotonic() + CLIENT_PATIENCE_SECS
        while True:
            try:
                resp = requests.request(method, url, headers=headers, timeout=20, **kwargs)
                answer = Answer(method, path, resp.status_code, resp.headers.get("Retry-After"),
                                resp.text)  # fmt: skip
            except requests.RequestException as exc:
                answer = Answer(method, path, 0, None, type(exc).__name__)
            with self._lock:
                self.log.answers.append(answer)
            if answer.status not in (0, 503) or time.monotonic() > deadline:
                return answer
            time.sleep(min(float(answer.retry_after or 1), 2.0))

    # --- steps ----------------------------------------------------------------------------------

    def run(self, steps: list[Step]) -> RoundLog:
        for step in steps:
            for ref in _refs_of(step):
                self._answered[ref] = threading.Event()
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(steps) or 1) as pool:
            futures = []
            for step in steps:
                time.sleep(max(0.0, start + step.at - time.monotonic()))
                futures.append(pool.submit(self._run_step, step))
            for future in futures:
                future.result()
        self.chaos.clear_faults()
        return self.log

    def _run_step(self, step: Step) -> None:
        try:
            done = getattr(self, f"_{step.kind}")(**step.params)
        except Exception as exc:  # a step that breaks is reported, the round goes on
            done = f"error {type(exc).__name__}: {exc}"
        line = f"{step.describe()} -> {done}"
        with self._lock:
            if done and done.startswith("skipped"):
                self.log.skipped.append(line)
            else:
                self.log.executed.append(line)
                self.log.faults += step.kind in FAULT_KINDS
        self.echo("  " + line)

    def _provision(self, tenant: str, ref: int, gateway: int, teardown_at_once=False) -> str:
        key = secrets.token_hex(8)
        answer = self.request("POST", "/instances", gateway=gateway, json={"tenant": tenant},
                              headers={"Idempotency-Key": key})  # fmt: skip
        if answer.status != 202:
            self.log.refused[ref] = answer.status
            self._answered[ref].set()
            return f"refused {answer.status}"
        instance = json.loads(answer.body)["instance"]
        self.log.instances[ref] = {"id": instance["id"], "tenant": tenant}
        self._answered[ref].set()
        if teardown_at_once:
            return f"{instance['id']} then {self._teardown(ref, twice=False, gateway=1 - gateway)}"
        return instance["id"]

    def _first_provisions(self, tenant: str, refs: tuple[int, int]) -> str:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda n: self._provision(tenant, refs[n], n), (0, 1)))
        return " & ".join(results)

    def _instance_of(self, ref: int) -> dict | None:
        self._answered[ref].wait(REF_WAIT_SECS)
        return self.log.instances.get(ref)

    def _teardown(self, ref: int, twice: bool, gateway: int = 0) -> str:
        instance = self._instance_of(ref)
        if instance is None:
            return f"skipped: provision {ref} was refused"
        path = f"/instances/{instance['tenant']}/{instance['id']}"
        statuses = []
        for n in range(2 if twice else 1):
            answer = self.request("DELETE", path, gateway=gateway + n)
            statuses.append(answer.status)
            if answer.status == 202:
                with self._lock:
                    self.log.teardowns_accepted.add(instance["id"])
        return f"DELETE {instance['id']} {statuses}"

    def _reconcile(self) -> str:
        answer = self.request("POST", "/reconcile", gateway=self.rng.randrange(2), json={})
        return str(answer.status)

    def _cloud_window(self, method: str, code: str, seconds: float) -> str:
        self.chaos.sim.admin("POST", "/cloud/faults",
                             json={"method": method, "code": code, "seconds": seconds})  # fmt: skip
        return "injected"

    def _cloud_operation_failure(self, method: str, code: str, count: int) -> str:
        fault = {"method": method, "code": code, "where": "operation", "count": count}
        self.chaos.sim.admin("POST", "/cloud/faults", json=fault)
        return "injected"

    def _guest_flap(self, seconds: float) -> str:
        flap = {"vm_id": None, "mode": "unavailable", "seconds": seconds}
        self.chaos.sim.admin("POST", "/guests/faults", json=flap)
        return "injected"

    def _guest_fault(self, ref: int, mode: str, seconds: float) -> str:
        instance = self._instance_of(ref)
        if instance is None:
            return f"skipped: provision {ref} was refused"
        vm_id = None
        for _ in range(20):  # the VM appears once the create is under way: give it 10 s
            vm_id = self._provider_id(instance["tenant"], instance["id"])
            if vm_id:
                break
            time.sleep(0.5)
        if vm_id is None:
            return f"skipped: {instance['id']} has no VM yet"
        resp = requests.post(self.chaos.sim.admin_url + "/guests/faults", timeout=10,
                             json={"vm_id": vm_id, "mode": mode, "seconds": seconds})  # fmt: skip
        return f"{vm_id} {resp.status_code}" if resp.ok else f"skipped: guest gone ({vm_id})"

    def _provider_id(self, tenant: str, instance_id: str) -> str | None:
        answer = self.request("GET", f"/instances?tenant={tenant}&limit=100")
        if answer.status != 200:
            return None
        items = json.loads(answer.body)["items"]
        return next((i["provider_id"] for i in items if i["id"] == instance_id), None)

    def _kill_child(self, worker: str) -> str:
        pid = self.chaos.kill_worker_child(worker, self.rng)
        return f"killed pid {pid}" if pid else "skipped: no child"

    def _restart_redis(self, down_secs: float) -> str:
        self.chaos.restart_redis(down_secs, time.sleep)
        return "restarted"

    def _restart_postgres(self, down_secs: float) -> str:
        self.chaos.restart_postgres(down_secs, time.sleep)
        return "restarted"


def _refs_of(step: Step) -> list[int]:
    if step.kind == "provision":
        return [step.params["ref"]]
    if step.kind == "first_provisions":
        return list(step.params["refs"])
    return []
