"""The gateway as a WSGI app for gunicorn: `gunicorn -c services/api/gunicorn.conf.py
services.api.wsgi:app`.

Gunicorn imports this in each worker after fork (no preload), so each worker builds its own
connection pool and clients.
"""

from services.api.app import create_app
from shared.logs import configure_logging
from shared.settings import load_settings

settings = load_settings(service="api")
configure_logging("api", settings.log_level)
app = create_app(settings)
