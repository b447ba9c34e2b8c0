"""All Celery wiring in one place (STYLE.md 4): the app factory, names, routing, reliability.

The gateway imports only this module (to send tasks by name); the worker entrypoints register
their tasks against the app it builds.
"""

from celery import Celery
from kombu import Queue

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
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        timezone="UTC",
        enable_utc=True,
    )
    return app
