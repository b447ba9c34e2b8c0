"""Provisioner worker entrypoint: `celery -A services.provisioner.worker worker -Q dark.provision`.

Each task decodes its message, calls the pipeline, and schedules what the pipeline asks for.
"""

import logging
import uuid

from celery import bootsteps
from celery.signals import worker_process_init

from shared.adapters.db import make_pool
from shared.adapters.registry import PostgresFleetRegistry
from shared.bootstrap import PerProcess, build_worker_context
from shared.celery_app import MAX_COUNTDOWN_SECS, TASK_PROVISION, TASK_TEARDOWN, make_celery
from shared.domain.errors import DomainError, RegistryUnavailable
from shared.logs import configure_logging, redact, request_id_var
from shared.service_layer.fleet import CeleryDispatcher
from shared.service_layer.pipeline import Pipeline, resume_unfinished
from shared.service_layer.retry import backoff
from shared.settings import load_settings

settings = load_settings()
configure_logging("provisioner", settings.log_level)
app = make_celery(settings)
dispatcher = CeleryDispatcher(app)
log = logging.getLogger(__name__)
CLOUD_MAX_RETRIES = 8


def _build_pipeline() -> Pipeline:
    ctx = build_worker_context(settings)
    return Pipeline(
        registry=ctx.registry,
        compute=ctx.compute,
        guest=ctx.guest,
        secrets=ctx.secrets,
        bundles=ctx.bundles,
        locks=ctx.locks,
        settings=settings,
    )


pipeline = PerProcess(_build_pipeline)


@worker_process_init.connect
def _warm_child(**_kwargs) -> None:
    pipeline.get()


class ResumeOnConnect(bootsteps.StartStopStep):
    """Resume every unfinished row each time the worker connects to the broker: at start-up, and
    after a lost broker connection (a Redis restart) is re-established.

    Messages held by a worker that was killed come back only after the visibility timeout, and so
    do the countdowns a worker held when its broker connection broke (Celery drops them from
    memory; Redis keeps them unacked). Resuming every unfinished row now (with fresh tokens, which
    make those old messages stale) converges at once. Runs in the parent process: only a
    short-lived Postgres pool, never the cloud SDK (gRPC objects must not exist in a process that
    forks replacement children).
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c) -> None:
        try:
            with make_pool(settings.database_url, max_size=1) as pool:
                resumed = resume_unfinished(
                    PostgresFleetRegistry(pool),
                    lambda inst, token: dispatcher.send(inst, token, request_id=None),
                )
        except DomainError as exc:
            # Never fatal to the worker: reconcile resumes rows whose chain is gone.
            log.warning("could not resume unfinished instances: %s", exc)
            return
        log.info("resumed %d unfinished instances", resumed)


app.steps["consumer"].add(ResumeOnConnect)


def _run(task, instance_id: str, token: str) -> None:
    request_id_var.set(getattr(task.request, "request_id", None))
    iid, tok = uuid.UUID(instance_id), uuid.UUID(token)
    try:
        step = pipeline.get().advance(iid, tok)
        if step.transient is not None and task.request.retries >= CLOUD_MAX_RETRIES:
            step = pipeline.get().give_up(iid, tok, step.transient)
    except Exception as exc:
        # Nothing was decided: Postgres is down, or an error no step classified (which Celery
        # would ack, ending the chain silently). Come back with the same token for as long as it
        # takes: a stale token ends it, and reconcile's stuck timer fails a row that never gets
        # past this (the message is the only thing that remembers this work until reconcile does).
        if isinstance(exc, RegistryUnavailable):
            log.warning("registry unavailable, retrying: %s", exc, extra={"instance_id": iid})
        else:
            log.warning(
                "unexpected error, retrying: %s: %s",
                type(exc).__name__,
                redact(str(exc)),
                extra={"instance_id": iid},
            )
        raise task.retry(
            countdown=backoff(task.request.retries + 1),
            max_retries=None,
            headers={"request_id": request_id_var.get()},
        ) from None
    if step.transient is not None:
        log.info("transient cloud error, retrying: %s", step.transient, extra={"instance_id": iid})
        raise task.retry(
            countdown=backoff(task.request.retries + 1),
            max_retries=CLOUD_MAX_RETRIES,
            headers={"request_id": request_id_var.get()},
        )
    if step.delay is not None:
        task.apply_async(
            args=[instance_id, str(step.token)],
            countdown=min(step.delay, MAX_COUNTDOWN_SECS),
            headers={"request_id": request_id_var.get()},
        )


@app.task(name=TASK_PROVISION, bind=True)
def advance(self, instance_id: str, token: str) -> None:
    _run(self, instance_id, token)


@app.task(name=TASK_TEARDOWN, bind=True)
def teardown(self, instance_id: str, token: str) -> None:
    _run(self, instance_id, token)
