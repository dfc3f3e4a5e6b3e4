"""Token refreshes and the token journal coordinated through PostgreSQL (OURA_ASSETS_COORDINATION), as runs
and APIs on several hosts use them: two "hosts" are two settings with data folders (lock dir, journal dir) of
their own and the same PostgreSQL database, against the simulator, a real throwaway server and real
processes. No wall-clock bounds: counts of what Oura saw.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from oura_assets import coordination
from oura_assets import warehouse as wh
from oura_assets.config import Settings, load_settings
from oura_assets.coordination_postgres import TABLE, PostgresCoordination
from oura_assets.oura.oauth import OuraOAuthApp, TokenSet
from oura_assets.token_journal import GrantJournal, TokenJournal, pair_from
from oura_assets.tokens import PatientTokens, TokenCipher
from oura_assets_tests import support
from oura_assets_tests.postgres_server import PostgresServer
from oura_assets_tests.test_token_journal import (
    PATIENT,
    _callback_in_child,
    _refresh_in_child,
    assert_next_sync_succeeds,
    connect_expired,
    connection,
    grant_service,
    journal_a_grant,
    kill_while_waiting_for_the_warehouse,
    oura_accepts,
)

# How long a racing process holds its refresh before asking Oura: long enough that every racer has read the
# stored (expired) pair by then unless a lock shared by all of them keeps it out.
SLOW_REFRESH_S = 1.0


@pytest.fixture
def coordination_dsn(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database(f"coord_{uuid.uuid4().hex[:12]}")


def host_env(tmp_path: Path, host: str, coordination_value: str) -> dict[str, str]:
    """The environment of a process on `host`: the deployment's variables (the shared warehouse, the
    simulator, the keys), a data folder of the host's own, and where coordination lives."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("OURA_", "CLERK_"))}
    env["OURA_ASSETS_DATA_DIR"] = str(tmp_path / host)
    env["OURA_ASSETS_COORDINATION"] = coordination_value
    return env


@pytest.fixture
def hosts(pipeline_env: Settings, tmp_path: Path, coordination_dsn: str) -> tuple[dict[str, str], ...]:
    return tuple(host_env(tmp_path, host, f"postgres:{coordination_dsn}") for host in ("host-a", "host-b"))


def settings_of(env: dict[str, str]) -> Settings:
    return load_settings(env, require=("oauth", "tokens"))


def table_dump(server: PostgresServer, dsn: str) -> str:
    """Everything the journal table holds, as text (what a database dump or a curious operator sees)."""
    return server.psql(f"SELECT * FROM {TABLE}", dbname=dsn.split()[0].removeprefix("dbname="))  # noqa: S608


class _SlowRefresh(OuraOAuthApp):
    def refresh(self, refresh_token: str, **kwargs: Any) -> TokenSet:
        time.sleep(SLOW_REFRESH_S)
        return super().refresh(refresh_token, **kwargs)


def _refresh_racer(env: dict[str, str], barrier: Any, results: Any) -> None:
    settings = settings_of(env)
    source = PatientTokens(
        PATIENT,
        wh.Warehouse(settings.warehouse_path, lock_timeout_s=60),
        TokenCipher(settings.token_keys),
        _SlowRefresh.from_settings(settings),
        settings.lock_dir,
        coordination=coordination.from_settings(settings),
    )
    barrier.wait()
    try:
        results.put(source.get())
    except Exception as exc:
        results.put(f"error: {type(exc).__name__}")


def race_two_hosts(simulator, env_a: dict[str, str], env_b: dict[str, str]) -> tuple[list[str], dict]:
    """Two processes on each host refresh the patient at once: their answers, and Oura's token counts."""
    support.connect_patient(
        settings_of(env_a),
        PATIENT,
        "racer",
        expires_at=datetime.now(UTC) - timedelta(minutes=1),
        learn_oura_user_id=False,
    )
    before = simulator.control.stats()
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    # Two processes on each host (A, B, A, B), released together by the barrier.
    processes = [
        context.Process(target=_refresh_racer, args=((env_a, env_b)[n % 2], barrier, results))
        for n in range(4)
    ]
    for process in processes:
        process.start()
    answers = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert [p.exitcode for p in processes] == [0] * 4
    after = simulator.control.stats()
    return answers, {
        "refresh_grants": after["refresh_grants"] - before["refresh_grants"],
        "spent_refresh_reuse": after["spent_refresh_reuse"] - before["spent_refresh_reuse"],
    }


@pytest.mark.slow
def test_processes_on_two_hosts_refresh_a_patient_once(simulator, hosts) -> None:
    env_a, env_b = hosts
    answers, oura = race_two_hosts(simulator, env_a, env_b)
    assert oura == {"refresh_grants": 1, "spent_refresh_reuse": 0}
    assert len(set(answers)) == 1 and not answers[0].startswith("error"), answers
    record = connection(settings_of(env_b))
    assert record is not None and record.status == "active"
    # Nothing was left on either host's disk, nor in the table.
    for env in hosts:
        assert not list(settings_of(env).token_journal_dir.glob("*"))
        assert not list(settings_of(env).lock_dir.glob("oura-tokens-*"))


@pytest.mark.slow
def test_control_per_host_files_let_two_hosts_spend_one_refresh_token_twice(
    simulator, pipeline_env, tmp_path
) -> None:
    """Why the PostgreSQL backend exists: with each host's own lock files, the same race double-spends (and
    so the test above can fail)."""
    env_a, env_b = (host_env(tmp_path, host, "local") for host in ("host-a", "host-b"))
    answers, oura = race_two_hosts(simulator, env_a, env_b)
    assert oura["spent_refresh_reuse"] >= 1, (answers, oura)
    assert any(answer.startswith("error") for answer in answers)


@pytest.mark.slow
def test_a_pair_journaled_on_a_host_killed_after_oura_answered_is_applied_on_another_host(
    simulator, hosts, postgres_server, coordination_dsn
) -> None:
    env_a, env_b = hosts
    host_a, host_b = settings_of(env_a), settings_of(env_b)
    connect_expired(host_a, "moved")
    kill_while_waiting_for_the_warehouse(host_a, _refresh_in_child, (env_a,), 0.0)
    assert simulator.control.stats()["refresh_grants"] == 1  # Oura had rotated the pair before the kill

    # The pair is in the table, as ciphertext only; host A's disk holds nothing.
    journal = TokenJournal(coordination.from_settings(host_b).journal_store(), TokenCipher(host_b.token_keys))
    (name,) = journal.names("refresh-")
    pair = pair_from(journal.read(name) or {})
    dump = table_dump(postgres_server, coordination_dsn)
    assert name in dump
    for secret in (pair.refresh_token, pair.access_token, PATIENT):
        assert secret not in dump
    assert not list(host_a.token_journal_dir.glob("*"))

    # Host B (its own, empty data folder) applies it: the sync spends the rotated token, not the dead one.
    assert_next_sync_succeeds(simulator, host_b, "moved")
    stats = simulator.control.stats()
    assert (stats["refresh_grants"], stats["spent_refresh_reuse"]) == (2, 0)
    assert journal.names("") == []
    assert not list(host_b.token_journal_dir.glob("*"))


@pytest.mark.slow
def test_a_grant_of_a_callback_killed_on_one_host_is_stored_by_another_hosts_recovery(
    simulator, hosts, postgres_server, coordination_dsn
) -> None:
    env_a, env_b = hosts
    host_a, host_b = settings_of(env_a), settings_of(env_b)
    service_a = grant_service(host_a)
    auth_url = httpx.URL(service_a.start_connect(PATIENT)["authUrl"])
    answer = httpx.get(auth_url.copy_add_param("sim_user", "moved-grant"), follow_redirects=False)
    location = httpx.URL(answer.headers["location"])
    code, state = location.params["code"], location.params["state"]

    kill_while_waiting_for_the_warehouse(host_a, _callback_in_child, (env_a, code, state), 0.0)
    assert connection(host_b) is None  # the dead callback stored nothing
    (name,) = grant_service(host_b).grants.names()
    entry = grant_service(host_b).grants.read(name)
    assert entry is not None
    dump = table_dump(postgres_server, coordination_dsn)
    for secret in (entry.tokens.refresh_token, entry.tokens.access_token, PATIENT, code):
        assert secret not in dump

    # The callback's advisory lock went with its process: host B's recovery sees the grant as orphaned.
    assert grant_service(host_b).recover_grants() == {"stored": 1, "revoked": 0, "left": 0}
    record = connection(host_b)
    assert record is not None and record.status == "active"
    assert grant_service(host_a).grants.names() == []
    assert_next_sync_succeeds(simulator, host_b, "moved-grant")
    stats = simulator.control.stats()
    assert (stats["code_grants"], stats["code_reuse"], stats["spent_refresh_reuse"]) == (1, 0, 0)


def test_a_grant_whose_callback_is_alive_on_one_host_is_left_alone_by_another(simulator, hosts) -> None:
    host_a, host_b = (settings_of(env) for env in hosts)
    tokens = journal_a_grant(host_a, "alive", patient_id=PATIENT, disposition="store")
    service_a = grant_service(host_a)
    (name,) = service_a.grants.names()
    with service_a.grants.held(name, wait=True):
        assert grant_service(host_b).recover_grants() == {"stored": 0, "revoked": 0, "left": 0}
    assert grant_service(host_b).recover_grants()["stored"] == 1
    assert oura_accepts(host_b, tokens.access_token)


def test_an_orphaned_unattributable_grant_journaled_on_one_host_is_revoked_by_another(
    simulator, hosts
) -> None:
    host_a, host_b = (settings_of(env) for env in hosts)
    tokens = journal_a_grant(host_a, "orphan", patient_id=None, disposition="store")
    assert grant_service(host_b).recover_grants() == {"stored": 0, "revoked": 1, "left": 0}
    assert not oura_accepts(host_b, tokens.access_token)
    assert grant_service(host_a).grants.names() == []


def test_the_refresh_lock_is_one_lock_across_hosts_and_names_no_patient(hosts, postgres_server) -> None:
    host_a, host_b = (settings_of(env) for env in hosts)
    a = coordination.from_settings(host_a)
    assert isinstance(a, PostgresCoordination) and host_b.coordination is not None
    b = PostgresCoordination(host_b.coordination)  # what another host's process has: its own sessions
    name = "oura-tokens-0123abcd"
    held = a.refresh_lock(name)
    assert held.acquire(5)
    try:
        assert not b.refresh_lock(name).acquire(0)
        assert not b.refresh_lock(name).acquire(0.2)  # waited, and gave up
        assert b.refresh_lock("oura-tokens-another").acquire(0)  # another patient is not held up
        locks = postgres_server.psql(
            "SELECT classid::text || ':' || objid::text FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
        # Held once (by `held`), under a key made from a hash: nothing of the name reaches the server.
        assert len(locks.splitlines()) == 1 and "0123abcd" not in locks
    finally:
        held.release()
    other = b.refresh_lock(name)
    assert other.acquire(0)
    other.release()
    b.close()


def test_erasure_on_one_host_revokes_and_removes_a_grant_journaled_on_another(simulator, hosts) -> None:
    host_a, host_b = (settings_of(env) for env in hosts)
    tokens = journal_a_grant(host_a, "erased", patient_id=PATIENT, disposition="store")
    grant_service(host_b).erase(PATIENT)
    assert not oura_accepts(host_b, tokens.access_token)
    assert (
        GrantJournal(
            TokenJournal(coordination.from_settings(host_a).journal_store(), TokenCipher(host_a.token_keys))
        ).names()
        == []
    )


def test_a_coordination_connection_the_server_dropped_is_reopened(
    hosts, postgres_server, coordination_dsn
) -> None:
    settings = settings_of(hosts[0])
    journal = TokenJournal(
        coordination.from_settings(settings).journal_store(), TokenCipher(settings.token_keys)
    )
    journal.write("refresh-dropped", {"n": 1})
    dbname = coordination_dsn.split()[0].removeprefix("dbname=")
    ours = f"datname = '{dbname}' AND application_name = 'oura-assets coordination'"
    killed = postgres_server.psql(
        f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {ours}"  # noqa: S608
    )
    assert int(killed) >= 1
    lock = coordination.from_settings(settings).refresh_lock("oura-tokens-dropped")
    assert lock.acquire(5)  # on a new session: the pooled one died with its backend
    lock.release()
    postgres_server.psql(
        f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {ours}"  # noqa: S608
    )
    assert journal.read("refresh-dropped") == {"n": 1}
    journal.remove("refresh-dropped")
    assert not journal.exists("refresh-dropped")
