"""Apply pending migrations to DATABASE_URL (what every service also does at start-up)."""

from shared.adapters.db import migrate
from shared.settings import load_settings

if __name__ == "__main__":
    applied = migrate(load_settings().database_url)
    print(f"migrations applied: {', '.join(applied) or 'none pending'}")
