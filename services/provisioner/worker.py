"""Provisioner worker entrypoint: `celery -A services.provisioner.worker worker -Q dark.provision`.

Each task runs one pipeline step for its message; what comes next (a retry, the next message, giving
up) is decided by the tasks' base class, shared.celery_app.PipelineTask.
"""

import logging
import uuid

from celery import bootsteps
from celery.signals import worker_process_init

from shared.bootstrap import PerProcess, build_provisioner, short_lived_registry
from shared.celery_app import (
    TASK_PROVISION,
    TASK_TEARDOWN,
    CeleryDispatcher,
    PipelineTask,
    make_celery,
)
from shared.domain.errors import DomainError
from shared.domain.records import Instance
from shared.logs import configure_logging
from shared.service_layer.pipeline import Pipeline, resume_unfinished
from shared.settings import load_settings

settings = load_settings(service="provisioner")
configure_logging("provisioner", settings.log_level)
app = make_celery(settings)
dispatcher = CeleryDispatcher(app)
log = logging.getLogger(__name__)

provisioner = PerProcess(lambda: build_provisioner(settings, celery_app=app))


@worker_process_init.connect
def _warm_child(**_kwargs) -> None:
    provisioner.get()


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
        def send(instance: Instance, token: uuid.UUID) -> None:
            dispatcher.send(instance, token, request_id=None)

        try:
            with short_lived_registry(settings) as registry:
                resumed = resume_unfinished(registry, send)
        except DomainError as exc:
            # Never fatal to the worker: reconcile resumes rows whose chain is gone.
            log.warning("could not resume unfinished instances: %s", exc)
            return
        log.info("resumed %d unfinished instances", resumed)


app.steps["consumer"].add(ResumeOnConnect)


class ProvisionerTask(PipelineTask):
    def pipeline(self) -> Pipeline:
        return provisioner.get().pipeline


@app.task(name=TASK_PROVISION, bind=True, base=ProvisionerTask)
def advance(self: ProvisionerTask, instance_id: str, token: str) -> None:
    self.run_pipeline(instance_id, token)


@app.task(name=TASK_TEARDOWN, bind=True, base=ProvisionerTask)
def teardown(self: ProvisionerTask, instance_id: str, token: str) -> None:
    self.run_pipeline(instance_id, token)
