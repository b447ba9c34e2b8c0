"""Flower's Celery app: `celery -A services.flower flower`.

Flower only watches the broker's events, so it loads nothing but the broker URL (and, in
production, demands its basic auth, which Flower itself reads from FLOWER_BASIC_AUTH). It imports
no worker module: those load the workers' settings, which Flower is never given.
"""

from shared.celery_app import make_celery
from shared.settings import load_settings

settings = load_settings(service="flower")
app = make_celery(settings)
