"""The Celery wiring without Redis: the request id travels in the message headers (publish and
prerun signals), and the pipeline tasks' base class decides retries, give-up and continuations."""

import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from celery import Celery
from celery import exceptions as celery_exceptions
from celery.contrib.testing.worker import start_worker
from celery.utils.threads import LocalStack

from shared.celery_app import (
    CLOUD_MAX_RETRIES,
    MAX_COUNTDOWN_SECS,
    TASK_TEARDOWN,
    CeleryDispatcher,
    PipelineTask,
)
from shared.domain.errors import CloudTransient, RegistryUnavailable
from shared.domain.lifecycle import Status
from shared.domain.records import Instance
from shared.logs import request_id_var
from shared.service_layer.pipeline import DONE, Step
from shared.service_layer.retry import MAX_BACKOFF_SECS

# --- the request id -------------------------------------------------------------------------------


class Seen:
    """What the tasks saw, by key, and an event per key set when its chain is over."""

    def __init__(self) -> None:
        self.values: dict[str, list] = {}
        self.events: dict[str, threading.Event] = {}

    def add(self, key, value, *, last: bool) -> None:
        self.values.setdefault(key, []).append(value)
        if last:
            self.event(key).set()

    def event(self, key) -> threading.Event:
        return self.events.setdefault(key, threading.Event())

    def wait(self, key) -> list:
        assert self.event(key).wait(10), f"no task finished for {key!r}"
        return self.values[key]


@pytest.fixture(scope="module")
def memory_app():
    app = Celery("wiring-test", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update(task_default_queue="wiring-test", worker_hijack_root_logger=False)
    seen = Seen()

    @app.task(name="wiring.chain", bind=True, shared=False)
    def chain(self, key: str, hops: int) -> None:
        seen.add(key, request_id_var.get(), last=hops == 0)
        if hops > 0:
            # A continuation published from inside a task carries the task's request id.
            self.apply_async(args=[key, hops - 1])

    @app.task(name=TASK_TEARDOWN, shared=False)
    def teardown(instance_id: str, token: str) -> None:
        seen.add(TASK_TEARDOWN, (instance_id, token, request_id_var.get()), last=True)

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield app, seen


def test_the_request_id_set_before_publishing_is_the_tasks_and_its_continuations(memory_app):
    app, seen = memory_app
    token = request_id_var.set("req-publish-1")
    try:
        app.send_task("wiring.chain", args=["chain", 2])
    finally:
        request_id_var.reset(token)
    assert seen.wait("chain") == ["req-publish-1"] * 3
    assert request_id_var.get() is None  # the sender's context is left as it was


def test_a_message_sent_with_no_request_id_carries_none(memory_app):
    app, seen = memory_app
    app.send_task("wiring.chain", args=["none", 0])
    assert seen.wait("none") == [None]


def test_the_dispatcher_sends_its_request_id_argument_whatever_the_context(memory_app):
    app, seen = memory_app
    now = datetime.now(UTC)
    instance = Instance(
        id=uuid.uuid4(),
        tenant="acme",
        status=Status.TEARING_DOWN,
        vm_name="vm",
        idempotency_key=uuid.uuid4(),
        created_at=now,
        updated_at=now,
        status_changed_at=now,
    )
    token = uuid.uuid4()
    outer = request_id_var.set("the-request-in-context")
    try:
        CeleryDispatcher(app).send(instance, token, request_id="reconcile-7")
        assert request_id_var.get() == "the-request-in-context"
    finally:
        request_id_var.reset(outer)
    assert seen.wait(TASK_TEARDOWN) == [(str(instance.id), str(token), "reconcile-7")]


# --- the pipeline tasks' decisions ----------------------------------------------------------------


class Retry(Exception):
    def __init__(self, **options) -> None:
        super().__init__(options)
        self.options = options


@dataclass
class FakePipeline:
    steps: list = field(default_factory=list)  # what advance returns (or raises), in order
    given_up: list = field(default_factory=list)

    def advance(self, instance_id, token):
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def give_up(self, instance_id, token, error):
        self.given_up.append((instance_id, token, error))
        return DONE


class FakeTask(PipelineTask):
    fake: FakePipeline

    def pipeline(self):
        return self.fake

    def retry(self, **options):  # Celery's would publish; the decision is what is tested
        return Retry(**options)

    def apply_async(self, args=None, **options):
        self.sent.append((args, options))


def run(steps, *, retries=0):
    task = FakeTask()
    task.fake, task.sent = FakePipeline(list(steps)), []
    task.request_stack = LocalStack()  # what binding the task to an app would give it
    task.push_request(retries=retries)
    iid, tok = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        task.run_pipeline(iid, tok)
        retry = None
    except Retry as exc:
        retry = exc.options
    finally:
        task.pop_request()
    return task, retry, (iid, tok)


def test_a_finished_step_sends_nothing_and_retries_nothing():
    task, retry, _ = run([DONE])
    assert retry is None and task.sent == [] and task.fake.given_up == []


def test_a_wait_sends_the_next_message_with_the_fresh_token_and_a_capped_countdown():
    fresh = uuid.uuid4()
    task, retry, (iid, _) = run([Step(delay=MAX_COUNTDOWN_SECS * 10, token=fresh)])
    assert retry is None
    assert task.sent == [([iid, str(fresh)], {"countdown": MAX_COUNTDOWN_SECS})]
    task, _, (iid, _) = run([Step(delay=2.0, token=fresh)])
    assert task.sent == [([iid, str(fresh)], {"countdown": 2.0})]


@pytest.mark.parametrize("error", [RegistryUnavailable("postgres down"), KeyError("a bug")])
def test_an_undecided_step_retries_without_limit(error):
    task, retry, _ = run([error], retries=1000)
    assert retry["max_retries"] is None
    assert 0 <= retry["countdown"] <= MAX_BACKOFF_SECS
    assert task.sent == [] and task.fake.given_up == []


def test_a_transient_cloud_error_retries_up_to_the_cap():
    error = CloudTransient("unavailable")
    task, retry, _ = run([Step(transient=error)], retries=CLOUD_MAX_RETRIES - 1)
    assert retry["max_retries"] == CLOUD_MAX_RETRIES
    assert 0 <= retry["countdown"] <= MAX_BACKOFF_SECS
    assert task.fake.given_up == []


def test_a_transient_cloud_error_past_the_cap_gives_up():
    error = CloudTransient("unavailable")
    task, retry, (iid, tok) = run([Step(transient=error)], retries=CLOUD_MAX_RETRIES)
    assert retry is None and task.sent == []
    assert task.fake.given_up == [(uuid.UUID(iid), uuid.UUID(tok), error)]


class BoundPipelineTask(PipelineTask):
    """A PipelineTask whose retry is Celery's own (publishing to an in-memory broker)."""

    fake: FakePipeline

    def pipeline(self):
        return self.fake


@pytest.mark.parametrize("retries", [3, 50])
def test_celerys_own_retry_keeps_retrying_an_undecided_step_past_the_tasks_default_limit(retries):
    # Celery reads retry(max_retries=None) as "the task's max_retries" (3 by default), not as
    # "no limit": the fourth Postgres failure in a row would end the chain silently.
    app = Celery("retry-test", broker="memory://", set_as_current=False)

    @app.task(name="retry-test.advance", bind=True, base=BoundPipelineTask, shared=False)
    def advance(self, instance_id: str, token: str) -> None:
        self.run_pipeline(instance_id, token)

    app.finalize()
    task = app.tasks["retry-test.advance"]
    task.fake = FakePipeline([RegistryUnavailable("postgres down")])
    task.push_request(
        id=str(uuid.uuid4()),
        retries=retries,
        called_directly=False,
        args=[str(uuid.uuid4()), str(uuid.uuid4())],
        kwargs={},
        delivery_info={},
    )
    try:
        with pytest.raises(celery_exceptions.Retry):
            task.run_pipeline(*task.request.args)
    finally:
        task.pop_request()
