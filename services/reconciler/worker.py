"""Reconciler entrypoint (docs/ARCHITECTURE.md#reconcile).

    celery -A services.reconciler.worker worker -Q dark.reconcile   # runs the reconcile task
    celery -A services.reconciler.worker beat                       # ticks every interval

Beat has a schedule only when RECONCILE_INTERVAL_SECS > 0. Run one beat: a second one only adds
runs (each run is single-flight under a Postgres advisory lock, however many beats and workers
there are), never concurrent ones.
"""

from datetime import UTC, datetime

from celery.signals import worker_process_init

from shared.bootstrap import PerProcess, build_reconciler
from shared.celery_app import TASK_RECONCILE, make_celery, reconcile_beat_schedule
from shared.logs import configure_logging
from shared.service_layer.reconcile import reconcile_once
from shared.settings import load_settings

settings = load_settings(service="reconciler")
configure_logging("reconciler", settings.log_level)
app = make_celery(settings)
app.conf.beat_schedule = reconcile_beat_schedule(settings)
# Built in each pool child, never at import: beat loads this module too and needs neither Postgres
# nor the YC SDK.
peers = PerProcess(lambda: build_reconciler(settings, celery_app=app))


@worker_process_init.connect
def _warm_child(**_kwargs) -> None:
    peers.get()


@app.task(name=TASK_RECONCILE)
def run(
    trigger: str = "schedule", dry_run: bool = False, confirm_destructive: int = 0
) -> dict | None:
    p = peers.get()
    summary = reconcile_once(
        p.registry,
        p.compute,
        p.runs,
        p.locks,
        settings,
        now=datetime.now(UTC),
        dry_run=settings.reconcile_dry_run or dry_run,  # a caller can only make it safer
        trigger=trigger,
        fleet=p.fleet,
        claims=p.claims,
        confirm_destructive=_count(confirm_destructive),
    )
    if summary is None:
        return None
    return {"run_id": summary.run_id, "outcome": summary.outcome, "counts": summary.counts}


def _count(value: object) -> int:
    # The gateway validated it; a malformed message confirms nothing rather than failing the run.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value
