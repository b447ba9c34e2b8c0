"""Apply pending migrations to DATABASE_URL, then exit.

The services never migrate at start-up: this command runs before them, from `make run`
(devtools/run.py) and as the one-shot `migrate` service of docker-compose.yml, which the other
services wait for. It takes an advisory lock, so two of it at once apply each migration once.
"""

from shared.adapters.db import migrate
from shared.settings import load_settings

if __name__ == "__main__":
    applied = migrate(load_settings(service="migrate").database_url)
    print(f"migrations applied: {', '.join(applied) or 'none pending'}")
