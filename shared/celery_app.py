"""All Celery wiring in one place (docs/ARCHITECTURE.md#conventions): the app factory, names,
routing, reliability.

The gateway imports only this module (to send tasks by name); the worker entrypoints register
their tasks against the app it builds.
"""

from celery import Celery
from celery.concurrency.asynpool import AsynPool
from celery.worker.consumer import Consumer
from kombu import Queue
from kombu.exceptions import KombuError, OperationalError
from redis.exceptions import RedisError

from shared.domain.errors import DispatchUnavailable
from shared.settings import Settings

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


def make_celery(settings: Settings, name: str = "dark") -> Celery:
    app = Celery(name, broker=settings.redis_url, backend=settings.redis_url)
    visibility = {"visibility_timeout": settings.celery_visibility_timeout}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_routes=ROUTES,
        task_queues=[Queue(q) for q in QUEUES],
        task_default_queue=QUEUE_PROVISION,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_time_limit=TASK_TIME_LIMIT_SECS,
        task_soft_time_limit=TASK_TIME_LIMIT_SECS - 10,
        broker_transport_options=visibility,
        result_backend_transport_options=visibility,
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


class BrokerLossSafeConsumer(Consumer):
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

    def on_connection_error_after_connected(self, exc):
        channel = getattr(self.task_consumer, "channel", None)
        if channel is not None:
            channel.do_restore = False
        super().on_connection_error_after_connected(exc)


def _track_live_children_only(track):
    """Celery 5.7's prefork pool, made to survive a child that died around a broker reconnect.

    When a pool child exits (SIGKILL, the OOM killer) the pool untracks it, setting its sentinel
    to None, and replaces it a moment later. If the broker connection is re-established in that
    moment, the consumer re-registers every listed child with the new event loop and hands that
    None to kombu, whose ValueError is not among the errors Celery tolerates there: the whole worker
    node exits. An exited child has nothing to watch; its replacement is tracked when it starts.
    """

    def track_child(pool, proc, hub):
        if getattr(proc, "_sentinel_poll", 0) is None:
            return None
        return track(pool, proc, hub)

    track_child.guarded = True
    return track_child


if not getattr(AsynPool._track_child_process, "guarded", False):
    AsynPool._track_child_process = _track_live_children_only(AsynPool._track_child_process)


def reconcile_beat_schedule(settings: Settings) -> dict:
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
    try:
        result = app.send_task(
            TASK_RECONCILE,
            kwargs={
                "trigger": trigger,
                "dry_run": dry_run,
                "confirm_destructive": confirm_destructive,
            },
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        )
    except (KombuError, OperationalError, RedisError, OSError) as exc:
        raise DispatchUnavailable("the task queue is unreachable; try again later") from exc
    return result.id


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
