"""The onboarding service as a WSGI app for gunicorn: `gunicorn -c
services/onboarding/gunicorn.conf.py services.onboarding.wsgi:app`.

Gunicorn imports this in each worker after fork (no preload), so each worker builds its own
connection pool and Vault client.
"""

from services.onboarding.app import create_app
from shared.logs import configure_logging
from shared.settings import load_settings

settings = load_settings(service="onboarding")
configure_logging("onboarding", settings.log_level)
app = create_app(settings)
