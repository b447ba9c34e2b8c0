"""celery-beat's app: `celery -A services.reconciler.beat beat` (one beat per deployment).

Beat only enqueues the reconcile task by name every RECONCILE_INTERVAL_SECS, so it loads only the
broker and the interval: no database, no cloud credentials (services/reconciler/worker.py runs the
task).
"""

from shared.celery_app import make_celery, reconcile_beat_schedule
from shared.logs import configure_logging
from shared.settings import load_settings

settings = load_settings(service="beat")
configure_logging("beat", settings.log_level)
app = make_celery(settings)
app.conf.beat_schedule = reconcile_beat_schedule(settings)
