"""The throwaway PostgreSQL fixture is a real server: it answers SQL over TCP on loopback and keeps databases
apart."""

from __future__ import annotations

from oura_assets_tests.postgres_server import PostgresServer


def test_postgres_server_answers_sql_on_loopback(postgres_server: PostgresServer) -> None:
    assert postgres_server.host == "127.0.0.1"
    dsn = postgres_server.create_database("fixture_check")
    assert "dbname=fixture_check" in dsn
    postgres_server.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (41), (1)", dbname="fixture_check")
    assert postgres_server.psql("SELECT sum(x) FROM t", dbname="fixture_check") == "42"
    assert postgres_server.psql("SELECT count(*) FROM pg_tables WHERE tablename = 't'") == "0"
