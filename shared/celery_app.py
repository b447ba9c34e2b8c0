"""All Celery wiring in one place: the app factory, names, routing, reliability, the
dispatcher behind the TaskDispatcher port, the pipeline tasks' base class, and the request id that
travels in each message's headers.

The gateway reaches Celery only through this module (`GatewayTasks`: it sends tasks by name and
reads their state); the worker entrypoints register their tasks against the app it builds. Broker
and result-backend errors (kombu, redis) are translated here, at the edge, to DispatchUnavailable.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import signal
import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis
from billiard.pool import Pool as BilliardPool
from celery import Celery, Task, states
from celery.concurrency.asynpool import AsynPool
from celery.signals import before_task_publish, task_postrun, task_prerun
from celery.worker.consumer import Consumer
from kombu import Queue
from kombu.exceptions import KombuError, OperationalError
from kombu.message import Message
from redis.exceptions import RedisError
from redis.sentinel import Sentinel

from shared.domain.errors import DispatchUnavailable, RegistryUnavailable
from shared.domain.lifecycle import Status
from shared.domain.records import Instance
from shared.logs import request_id_var
from shared.redaction import redact
from shared.service_layer.retry import backoff
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.service_layer.pipeline import Pipeline

log = logging.getLogger(__name__)

QUEUE_PROVISION = "dark.provision"
QUEUE_RECONCILE = "dark.reconcile"
QUEUES = (QUEUE_PROVISION, QUEUE_RECONCILE)

TASK_PROVISION = "dark.provision.advance"
TASK_TEARDOWN = "dark.provision.teardown"
TASK_RECONCILE = "dark.reconcile.run"

ROUTES = {
    TASK_PROVISION: {"queue": QUEUE_PROVISION},
    TASK_TEARDOWN: {"queue": QUEUE_PROVISION},
    TASK_RECONCILE: {"queue": QUEUE_RECONCILE},
}

# No task runs longer than this (each does a handful of RPCs with their own deadlines), and no
# countdown is longer than MAX_COUNTDOWN_SECS; the visibility timeout must exceed both, or Redis
# redelivers a message that is still being worked on.
TASK_TIME_LIMIT_SECS = 120
MAX_COUNTDOWN_SECS = 60
# How many times a pipeline task retries a transient cloud error before the pipeline gives up.
CLOUD_MAX_RETRIES = 8

# Every message this project sends: a few quick tries, then DispatchUnavailable (the caller answers
# 503, or leaves the row for a worker's resume or reconcile).
SEND_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5}
_BROKER_ERRORS = (KombuError, OperationalError, RedisError, OSError)
# The message header that carries the request id from the sender to the task.
REQUEST_ID_HEADER = "request_id"


def redis_tls_options(settings: Settings) -> dict[str, Any] | None:
    """What Celery's `broker_use_ssl` / `redis_backend_use_ssl` and a redis-py client take to reach
    Redis over TLS, the server's certificate always verified (against REDIS_CA_FILE, or the
    system's roots); None for plain text. The settings refuse a redis:// URL with a CA file."""
    if not (settings.redis_url.startswith("rediss://") or settings.redis_ca_file):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_file:
        options["ssl_ca_certs"] = settings.redis_ca_file
    return options


def redis_transport_options(settings: Settings) -> dict[str, Any]:
    """The broker's and the result backend's transport options: the visibility timeout, and the
    master's name when REDIS_URL lists Sentinels."""
    options: dict[str, Any] = {"visibility_timeout": settings.celery_visibility_timeout}
    if settings.redis_sentinel_master:
        options["master_name"] = settings.redis_sentinel_master
    return options


def broker_client(app: Celery, **kwargs: Any) -> redis.Redis:
    """A redis-py client on `app`'s broker as Celery reaches it: the same TLS options, the same
    Sentinels and master. For what talks to Redis outside Celery (the gateway's readiness probe,
    `make run`'s preflight); `kwargs` go to the connection (timeouts, retry)."""
    url: str = app.conf.broker_url
    tls: dict[str, Any] = dict(app.conf.broker_use_ssl or {})
    if not url.startswith("sentinel://"):
        return redis.Redis.from_url(url, **tls, **kwargs)
    options = app.conf.broker_transport_options or {}
    parts = [urlsplit(u) for u in url.split(";") if u.strip()]
    sentinels = Sentinel(  # type: ignore[no-untyped-call]  # redis-py's Sentinel is untyped
        [(p.hostname or "localhost", p.port or 26379) for p in parts],
        sentinel_kwargs=options.get("sentinel_kwargs"),
        **kwargs,
    )
    # Kombu takes the master's credentials and DB number from the first URL.
    first = parts[0]
    master: redis.Redis = sentinels.master_for(  # type: ignore[no-untyped-call]
        options["master_name"],
        db=int(first.path.strip("/") or 0),
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        ssl=bool(tls),
        **tls,
    )
    return master


def make_celery(settings: Settings, name: str = "dark") -> Celery:
    app = Celery(name, broker=settings.redis_url, backend=settings.redis_url)
    transport = redis_transport_options(settings)
    tls = redis_tls_options(settings)
    if tls is not None:
        app.conf.update(broker_use_ssl=tls, redis_backend_use_ssl=tls)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_routes=ROUTES,
        task_queues=[Queue(q) for q in QUEUES],  # type: ignore[no-untyped-call]  # kombu's
        task_default_queue=QUEUE_PROVISION,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_time_limit=TASK_TIME_LIMIT_SECS,
        task_soft_time_limit=TASK_TIME_LIMIT_SECS - 10,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        result_expires=24 * 3600,
        task_track_started=True,
        worker_consumer=f"{__name__}:BrokerLossSafeConsumer",
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        timezone="UTC",
        enable_utc=True,
    )
    return app


# Celery ships no type information: its classes are Any to the type checker.
class BrokerLossSafeConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, made to survive losing the Redis broker (a Redis restart).

    Celery 5.7 with kombu 5.7: when the broker connection breaks, the consumer closes it twice,
    `collect()` then `close()`. The first close of the task channel fails on the dead socket, and
    `collect()` then detaches the transport from the connection; the second close tries to push
    the channel's unacknowledged messages (countdowns it holds, tasks running) back to their queue,
    which needs a Redis client built from that detached transport: AttributeError, not a
    connection error, so the worker exits ("Unrecoverable error") instead of reconnecting.

    Nothing could be pushed back anyway: the broker is unreachable. So the restore is skipped
    (kombu's own switch, `do_restore`). Those messages stay safe in Redis's unacked set, given
    back after the visibility timeout; the provisioner resumes its rows as soon as it reconnects.
    """

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        channel = getattr(self.task_consumer, "channel", None)
        if channel is not None:
            channel.do_restore = False
        super().on_connection_error_after_connected(exc)


# AsynPool._track_child_process(pool, proc, hub): Celery's, untyped.
_TrackChild = Callable[[Any, Any, Any], Any]


def _track_live_children_only(track: _TrackChild) -> _TrackChild:
    """Celery 5.7's prefork pool, made to survive a child that died around a broker reconnect.

    When a pool child exits (SIGKILL, the OOM killer) the pool untracks it, setting its sentinel
    to None, and replaces it a moment later. If the broker connection is re-established in that
    moment, the consumer re-registers every listed child with the new event loop and hands that
    None to kombu, whose ValueError is not among the errors Celery tolerates there: the whole worker
    node exits. An exited child has nothing to watch; its replacement is tracked when it starts.
    """

    def track_child(pool: Any, proc: Any, hub: Any) -> Any:
        if getattr(proc, "_sentinel_poll", 0) is None:
            return None
        return track(pool, proc, hub)

    setattr(track_child, _GUARDED, True)
    return track_child


# The mark on the patched method, so that the patch is applied once.
_GUARDED = "guarded"

if not getattr(AsynPool._track_child_process, _GUARDED, False):
    AsynPool._track_child_process = _track_live_children_only(AsynPool._track_child_process)


def _started_unless_crashed(pool: Any) -> bool:
    """billiard's `Pool.did_start_ok`, made to tell a child that could not start from one killed.

    Celery asks it once, right after the worker is ready: any child that has exited by then fails
    the start, and the whole worker node exits ("Could not start worker processes"). That is right
    for a child that cannot start (an import error, a crash), wrong for one SIGKILLed from outside
    in that moment (the OOM killer, an operator; the chaos suite, seed 232781): it did start, and
    the pool replaces it as it replaces any child that dies later (`maintain_pool`, every 5 s).
    """
    exitcodes = pool._join_exited_workers()
    return all(code == -signal.SIGKILL for code in exitcodes)


if BilliardPool.did_start_ok is not _started_unless_crashed:
    BilliardPool.did_start_ok = _started_unless_crashed


# Message.ack_log_error / reject_log_error(message, logger, errors, ...): kombu's, untyped.
_Settle = Callable[..., Any]


def _unless_detached(settle: _Settle, verb: str) -> _Settle:
    """kombu 5.7's message ack/reject, made to survive a channel its lost connection left behind.

    A task still running when the Redis broker connection breaks finishes after the consumer has
    detached the old channel from that connection; settling the message then raises
    AttributeError, which is not among the connection errors kombu tolerates there, and the whole
    worker node exits. Nothing can be settled on a lost connection anyway: Redis keeps the message
    unacknowledged and delivers it again after the visibility timeout, when its continuation token
    makes it harmless (the chain has moved on) or resumes it.
    """

    def guarded(message: Any, logger: logging.Logger, errors: Any, *args: Any, **kw: Any) -> Any:
        channel = message.channel
        if channel is not None and getattr(channel, "connection", object()) is None:
            logger.warning(
                "not %s message %r: its broker connection is gone (Redis delivers it again)",
                verb,
                message.delivery_tag,
            )
            return None
        return settle(message, logger, errors, *args, **kw)

    setattr(guarded, _GUARDED, True)
    return guarded


if not getattr(Message.ack_log_error, _GUARDED, False):
    Message.ack_log_error = _unless_detached(Message.ack_log_error, "acknowledging")  # type: ignore[method-assign]
    Message.reject_log_error = _unless_detached(Message.reject_log_error, "rejecting")  # type: ignore[method-assign]


def reconcile_beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """celery-beat's schedule: one reconcile every RECONCILE_INTERVAL_SECS, none at all for 0.

    A tick expires after one interval: ticks that piled up while no reconcile worker ran are
    dropped, the next tick does the same work. Run one beat; a second one only causes extra runs,
    never concurrent ones (each run is single-flight under a Postgres lock).
    """
    interval = settings.reconcile_interval
    if interval <= 0:
        return {}
    return {
        "reconcile": {
            "task": TASK_RECONCILE,
            "schedule": float(interval),
            "kwargs": {"trigger": "schedule"},
            "options": {"expires": float(interval)},
        }
    }


def send_reconcile(
    app: Celery, *, trigger: str, dry_run: bool = False, confirm_destructive: int = 0
) -> str:
    """Ask for a reconcile run now (the gateway's POST /reconcile); returns the task id.

    `dry_run=True` forces a dry run; it can never turn off RECONCILE_DRY_RUN.
    `confirm_destructive` approves that many actions judged from an absence for this run only.
    """
    return _send(
        app,
        TASK_RECONCILE,
        unavailable="the task queue is unreachable; try again later",
        kwargs={
            "trigger": trigger,
            "dry_run": dry_run,
            "confirm_destructive": confirm_destructive,
        },
    )


def _send(app: Celery, name: str, *, unavailable: str, **options: Any) -> str:
    """`send_task` with the one retry policy; a broker error becomes DispatchUnavailable."""
    try:
        result = app.send_task(name, retry=True, retry_policy=SEND_RETRY_POLICY, **options)
    except _BROKER_ERRORS as exc:
        raise DispatchUnavailable(unavailable) from exc
    task_id: str = result.id
    return task_id


@dataclass(frozen=True)
class TaskState:
    """A task's state as the result backend has it (Celery's names: PENDING for an unknown id)."""

    state: str
    ready: bool  # finished, one way or another


# What reading a task's state can fail with when the result backend (Redis) cannot answer.
_RESULT_BACKEND_ERRORS = (RedisError, OperationalError)


def task_state(app: Celery, task_id: str) -> TaskState:
    """The task's state only (never its result or traceback); DispatchUnavailable when the result
    backend cannot be read."""
    try:
        state: str = app.AsyncResult(task_id).state
    except _RESULT_BACKEND_ERRORS as exc:
        raise DispatchUnavailable("task states cannot be read right now") from exc
    return TaskState(state=state, ready=state in states.READY_STATES)


class GatewayTasks:
    """What the gateway asks of Celery: a reconcile run now, and a task's state. Sends through a
    producer-only copy of the app (see producer_app); reads states through the full one."""

    def __init__(self, celery_app: Celery) -> None:
        self._app = celery_app
        self._producer = producer_app(celery_app)

    @property
    def broker_url(self) -> str:
        url: str = self._app.conf.broker_url
        return url

    def send_reconcile(self, *, trigger: str, dry_run: bool, confirm_destructive: int) -> str:
        """See `send_reconcile`; DispatchUnavailable when the broker cannot be reached."""
        return send_reconcile(
            self._producer,
            trigger=trigger,
            dry_run=dry_run,
            confirm_destructive=confirm_destructive,
        )

    def state(self, task_id: str) -> TaskState:
        """See `task_state`; DispatchUnavailable when the result backend cannot be read."""
        return task_state(self._app, task_id)


class CeleryDispatcher:
    """The TaskDispatcher port over Celery: sends the pipeline's messages by task name (the gateway
    never imports worker code)."""

    def __init__(self, celery_app: Celery) -> None:
        self._app = producer_app(celery_app)

    def send(
        self,
        instance: Instance,
        token: uuid.UUID,
        *,
        request_id: str | None,
        countdown: float = 0,
        task_id: str | None = None,
    ) -> str:
        name = TASK_TEARDOWN if instance.status is Status.TEARING_DOWN else TASK_PROVISION
        with _current_request_id(request_id):
            return _send(
                self._app,
                name,
                unavailable=(
                    "the task queue is unreachable; the request is recorded and will be resumed"
                ),
                args=[str(instance.id), str(token)],
                countdown=countdown or None,
                task_id=task_id,
            )


@contextlib.contextmanager
def _current_request_id(request_id: str | None) -> Iterator[None]:
    # The publish signal reads the request id from the context: this message carries this one.
    token = request_id_var.set(request_id)
    try:
        yield
    finally:
        request_id_var.reset(token)


# --- the request id in the message headers ------------------------------------------------------
# Connected at import, in every process that loads this module: a sender puts its current request
# id in each message it publishes (a task's retry and continuation included), and a worker sets it
# around the task it runs, so that the task's log lines carry it.

_prerun_tokens: dict[str, contextvars.Token[str | None]] = {}


def _put_request_id(headers: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    request_id = request_id_var.get()
    if headers is not None and request_id is not None:
        headers.setdefault(REQUEST_ID_HEADER, request_id)


def _take_request_id(task_id: str | None = None, task: Task | None = None, **_kwargs: Any) -> None:
    if task is None or task_id is None:
        return
    _prerun_tokens[task_id] = request_id_var.set(getattr(task.request, REQUEST_ID_HEADER, None))


def _drop_request_id(task_id: str | None = None, **_kwargs: Any) -> None:
    token = _prerun_tokens.pop(task_id, None) if task_id is not None else None
    if token is not None:
        request_id_var.reset(token)


# Connected by call rather than as decorators: Celery's signals are untyped, and a decorator
# would leave the handlers untyped too.
before_task_publish.connect(_put_request_id)
task_prerun.connect(_take_request_id)
task_postrun.connect(_drop_request_id)


# --- the pipeline tasks ---------------------------------------------------------------------------


class PipelineTask(Task):  # type: ignore[misc]  # Celery's Task is untyped
    """The base of the provisioner's tasks: one pipeline step per message, and what comes next.

    - Nothing decided (Postgres down, an error no step classified): retry with the same token,
      with backoff, for as long as it takes. A stale token ends it, and reconcile's stuck timer
      fails a row that never gets past this (the message is the only thing that remembers this
      work until reconcile does); Celery would otherwise ack the error and end the chain silently.
    - A transient cloud error (`step.transient`): retry with backoff, CLOUD_MAX_RETRIES times; the
      next attempt after that asks the pipeline to give up (it fails the row or tears it down).
    - A wait (`step.delay`): the next message, with the step's fresh token, after that delay
      (capped at MAX_COUNTDOWN_SECS).

    A subclass says where its process's pipeline is (`pipeline`).
    """

    cloud_max_retries = CLOUD_MAX_RETRIES
    # No limit unless a retry names one: Celery reads `retry(max_retries=None)` as "the task's
    # max_retries", which defaults to 3, and the fourth failure in a row would be acked and end
    # the chain silently.
    max_retries = None

    def pipeline(self) -> Pipeline:
        raise NotImplementedError

    def run_pipeline(self, instance_id: str, token: str) -> None:
        iid, tok = uuid.UUID(instance_id), uuid.UUID(token)
        retries = self.request.retries
        try:
            step = self.pipeline().advance(iid, tok)
            if step.transient is not None and retries >= self.cloud_max_retries:
                step = self.pipeline().give_up(iid, tok, step.transient)
        except Exception as exc:
            if isinstance(exc, RegistryUnavailable):
                log.warning("registry unavailable, retrying: %s", exc, extra={"instance_id": iid})
            else:
                log.warning(
                    "unexpected error, retrying: %s: %s",
                    type(exc).__name__,
                    redact(str(exc)),
                    extra={"instance_id": iid},
                )
            raise self.retry(countdown=backoff(retries + 1), max_retries=None) from None
        if step.transient is not None:
            log.info(
                "transient cloud error, retrying: %s", step.transient, extra={"instance_id": iid}
            )
            raise self.retry(countdown=backoff(retries + 1), max_retries=self.cloud_max_retries)
        if step.delay is not None:
            self.apply_async(
                args=[instance_id, str(step.token)], countdown=min(step.delay, MAX_COUNTDOWN_SECS)
            )


def producer_app(app: Celery) -> Celery:
    """A copy of `app` that only sends messages.

    With a result backend, `send_task` also subscribes the sender to each task's result channel:
    a web process would collect subscriptions it never reads, and with Redis down the subscription
    fails with a RuntimeError instead of the broker's connection error. Task state is still stored
    by the workers and read through the full app.
    """
    clone = Celery(app.main)
    clone.conf.update(dict(app.conf.changes))
    clone.conf.broker_url = app.conf.broker_url
    clone.conf.result_backend = None
    return clone
