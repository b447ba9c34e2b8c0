"""The dashboard's sessions on Postgres (table `operator_sessions`, migrations/0007).

A session id is 256 random bits, handed to the browser in the signed cookie; the table keeps only
its SHA-256, so that reading the table gives nobody a session. Each row records the digest of the
operator token the session was started with (services/api/auth.py decides whether that token is
still configured) and when the session expires, by the database clock.
"""

import hashlib
import secrets
from datetime import timedelta

from psycopg_pool import ConnectionPool

from shared.adapters.db import pooled_cursor

_UNAVAILABLE = "the registry database did not answer"


def _id_hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


class PostgresOperatorSessions:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def start(self, token_digest: str, lifetime: timedelta) -> str:
        """A new session for the token with this digest; returns its id (for the cookie only)."""
        session_id = secrets.token_urlsafe(32)
        with pooled_cursor(self._pool, _UNAVAILABLE) as cur:
            # Expired sessions go whenever a new one starts: the table stays small.
            cur.execute("DELETE FROM operator_sessions WHERE expires_at <= now()")
            cur.execute(
                "INSERT INTO operator_sessions (id_hash, token_digest, expires_at)"
                " VALUES (%s, %s, now() + %s)",
                (_id_hash(session_id), token_digest, lifetime),
            )
        return session_id

    def token_digest(self, session_id: str) -> str | None:
        """The token digest of a live session; None when it ended, expired or never existed."""
        with pooled_cursor(self._pool, _UNAVAILABLE) as cur:
            row = cur.execute(
                "SELECT token_digest FROM operator_sessions"
                " WHERE id_hash = %s AND expires_at > now()",
                (_id_hash(session_id),),
            ).fetchone()
        return None if row is None else str(row["token_digest"])

    def end(self, session_id: str) -> None:
        with pooled_cursor(self._pool, _UNAVAILABLE) as cur:
            cur.execute("DELETE FROM operator_sessions WHERE id_hash = %s", (_id_hash(session_id),))
