"""What the PostgreSQL stores (the shared rate budget, token coordination) say about a server in messages.

A DSN may carry a password, so errors name the server (host, port, database) and the driver's first line,
never the connection string. One home for both stores: oura/rate_budget_postgres.py, coordination_postgres.py.
"""

from __future__ import annotations

import psycopg2
import psycopg2.extensions


def describe(dsn: str) -> str:
    """`host:port/dbname` of a DSN or URL, for messages: no user, no password."""
    try:
        parts = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        return "an unreadable connection string"
    host = parts.get("host") or parts.get("hostaddr") or "local socket"
    return f"{host}:{parts.get('port', 5432)}/{parts.get('dbname', '(default database)')}"


def first_line(exc: BaseException) -> str:
    """The first line of a driver error (its detail lines may quote the statement's values)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
