"""What the tests and the benchmarks both do to the pipeline: read the warehouse, compare tables, connect a
patient through the simulator's OAuth flow, run a sync over a range of partitions.

Plain functions, no pytest fixtures and no pytest import: `bench/` uses this module as it is, and
`conftest.py` wraps what a test wants as a fixture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import subprocess
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import httpx

from oura_assets import warehouse as wh
from oura_assets.config import Settings
from oura_assets.oura.client import OuraClient
from oura_assets.oura.oauth import OuraOAuthApp, TokenSet
from oura_assets.tls import tls_context
from oura_assets.tokens import PatientTokens, TokenCipher, store_granted_tokens

if TYPE_CHECKING:
    # Dagster is imported where a run is made, not here: the spawned children of the multi-process tests
    # import their test module, and with it this one, and need not pay for Dagster's import.
    import dagster as dg

# Where a helper reads from: the settings of a test environment, the warehouse file itself, or a connection
# a caller already holds (inside its own transaction).
Where = Settings | Path | str | wh.LakeLocation | wh.Warehouse | duckdb.DuckDBPyConnection

# Columns that record when something happened, not what: left out when tables are compared.
VOLATILE = frozenset(
    {"synced_at", "updated_at", "fetched_at", "recorded_at", "occurred_at", "last_synced_at"}
)
# Tables that record who is connected and what ran, rather than the data: not in a default snapshot.
BOOKKEEPING = frozenset(
    {
        "patient_graph.patient_events",
        "patient_graph.sync_results",
        "patient_graph.sync_requests",
        "patient_graph.oauth_states",
        "patient_graph.wearable_connections",
    }
)
SYNC_JOB = "oura_sync"
# The Oura resource's `rate_limit` for a run whose subject is not pacing: the simulator's own limit (5,000 per
# 5 minutes, as Oura's) is far above what such a test sends, so its requests need not be spread at 15 a
# second (about 100 of them, 6 s of waiting per run) to stay under it. `UNPACED` is a run config saying so.
UNPACED_RATE_LIMIT = 1_000_000
UNPACED: Mapping[str, Any] = {"resources": {"oura": {"config": {"rate_limit": UNPACED_RATE_LIMIT}}}}


@contextlib.contextmanager
def _connection(where: Where, purpose: str) -> Iterator[duckdb.DuckDBPyConnection]:
    if isinstance(where, duckdb.DuckDBPyConnection):
        yield where
        return
    if isinstance(where, wh.Warehouse):
        store = where
    elif isinstance(where, Settings):
        store = wh.Warehouse.from_settings(where)
    else:
        store = wh.Warehouse(where if wh.is_lake(where) else Path(where))
    with store.connect(purpose) as conn:
        yield conn


def query(where: Where, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    """The rows `sql` returns, read through the warehouse's writer lock (or on the connection given)."""
    with _connection(where, "test: query") as conn:
        return conn.execute(sql, list(params or [])).fetchall()


def _tables(conn: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        f"{schema}.{table}"
        for schema, table in conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('patient_graph', 'oura_raw') AND table_catalog = current_database() "
            "ORDER BY ALL"
        ).fetchall()
        if f"{schema}.{table}" not in BOOKKEEPING
    ]


def _table_rows(conn: duckdb.DuckDBPyConnection, table: str, drop: Collection[str]) -> list[tuple[Any, ...]]:
    schema, name = table.split(".")
    columns = [
        c
        for (c,) in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? AND table_catalog = current_database() "
            "ORDER BY ordinal_position",
            [schema, name],
        ).fetchall()
        if c not in drop
    ]
    assert columns, f"{table} has no column to compare"
    stable = ", ".join(f'"{c}"' for c in columns)
    return conn.execute(f"SELECT {stable} FROM {table} ORDER BY ALL").fetchall()  # noqa: S608 (catalog names)


def table_rows(where: Where, table: str, drop: Collection[str] = VOLATILE) -> list[tuple[Any, ...]]:
    """One table's rows, sorted, without the columns in `drop` (by default those saying when, not what)."""
    with _connection(where, "test: table rows") as conn:
        return _table_rows(conn, table, drop)


def snapshot(
    where: Where, tables: Collection[str] | None = None, drop: Collection[str] = VOLATILE
) -> dict[str, list[tuple[Any, ...]]]:
    """Whole tables as sorted rows without the columns in `drop`, for equality comparisons.

    By default every data table (raw documents and the patient graph), not the bookkeeping ones.
    """
    with _connection(where, "test: snapshot") as conn:
        names = _tables(conn) if tables is None else list(tables)
        return {table: _table_rows(conn, table, drop) for table in names}


def duplicate_keys(where: Where) -> dict[str, int]:
    """Rows beyond the first per primary key (`schema.TABLES`), by table, for the tables that have any.

    A DuckDB file enforces the keys itself; a DuckLake has none, so this is what shows the writers kept them.
    """
    found = {}
    with _connection(where, "test: duplicate keys") as conn:
        for name, table in wh.TABLES.items():
            key = ", ".join(table.primary_key)
            (extra,) = conn.execute(
                f"SELECT count(*) - count(DISTINCT ({key})) FROM {name}"  # noqa: S608 (schema constants)
            ).fetchone()
            if extra:
                found[name] = int(extra)
    return found


@dataclass(frozen=True)
class ConnectedPatient:
    patient_id: str
    ring_user: str
    tokens: TokenSet = dataclasses.field(repr=False)

    @property
    def access_token(self) -> str:
        return self.tokens.access_token


def authorize_code(app: OuraOAuthApp, ring_user: str, state: str = "test-state") -> str:
    """Play the patient's browser at the simulator's consent page (it consents at once for `ring_user`) and
    return the authorization code it redirects back with."""
    answer = httpx.get(
        httpx.URL(app.authorization_url(state)).copy_add_param("sim_user", ring_user),
        follow_redirects=False,
        timeout=10,
        verify=tls_context(),  # one context per process, as the package's own clients (tls.py)
    )
    assert answer.status_code in (302, 303), answer.text
    location = httpx.URL(answer.headers["location"])
    assert str(location).startswith(app.redirect_uri), location
    assert location.params["state"] == state
    return location.params["code"]


def connect_patient(
    settings: Settings,
    patient_id: str,
    ring_user: str | None = None,
    *,
    expires_at: datetime | None = None,
    learn_oura_user_id: bool = True,
    scopes: Sequence[str] | None = None,
) -> ConnectedPatient:
    """Connect a patient as the API callback does: the OAuth code flow against the simulator, then the granted
    pair stored encrypted with `store_granted_tokens`.

    `expires_at` stores another expiry than Oura's (an access token already expired, say). With
    `learn_oura_user_id` the patient's Oura user id is then read from Oura with the new token and stored, as
    the first sync does; without it Oura is asked nothing more. `scopes` asks for other scopes than the
    connect flow's (`config.OAUTH_SCOPES`).
    """
    ring_user = ring_user or f"{patient_id}-ring"
    store = wh.Warehouse.from_settings(settings)
    oauth = OuraOAuthApp.from_settings(settings)
    if scopes is not None:
        oauth.scopes = tuple(scopes)
    cipher = TokenCipher(settings.token_keys)
    tokens = oauth.exchange_code(authorize_code(oauth, ring_user))
    stored = tokens if expires_at is None else dataclasses.replace(tokens, expires_at=expires_at)
    with store.transaction("test: connect patient") as conn:
        store_granted_tokens(
            conn, patient_id, stored, cipher, oura_user_id=None, connected_at=datetime.now(UTC)
        )
    if learn_oura_user_id:
        source = PatientTokens(
            patient_id=patient_id, warehouse=store, cipher=cipher, oauth_app=oauth, lock_dir=settings.lock_dir
        )
        with OuraClient(settings.api_base_url, source) as client:
            info = client.personal_info()
        with store.transaction("test: oura user id") as conn:
            conn.execute(
                "UPDATE patient_graph.wearable_connections SET oura_user_id = ? WHERE patient_id = ?",
                [info["id"], patient_id],
            )
    return ConnectedPatient(patient_id, ring_user, tokens)


def run_sync(
    start: date,
    end: date | None = None,
    *,
    definitions: dg.Definitions | None = None,
    instance: dg.DagsterInstance | None = None,
    tags: Mapping[str, str] | None = None,
    run_config: Mapping[str, Any] | None = None,
    asset_selection: Sequence[dg.AssetKey] | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize the sync job in this process, never raising: the caller asserts on the result.

    Over [start, end] as one run, as a single-run backfill launches it; with no `end`, the one daily
    partition `start`, as a per-partition backfill launches it. The definitions are loaded from the
    environment and the instance is ephemeral unless given.
    """
    import dagster as dg

    from oura_assets.definitions import defs as load_defs
    from oura_assets.defs.partitions import partition_range_tags

    definitions = definitions or load_defs()
    placement: dict[str, Any] = (
        {"partition_key": start.isoformat()} if end is None else {"tags": partition_range_tags(start, end)}
    )
    if tags:
        placement["tags"] = {**placement.get("tags", {}), **tags}
    return definitions.resolve_job_def(SYNC_JOB).execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(),
        run_config=dict(run_config or {}),
        asset_selection=list(asset_selection) if asset_selection else None,
        raise_on_error=False,
        **placement,
    )


def copy_warehouse(path: Path, folder: Path) -> Path:
    """A copy of the warehouse file `path` in `folder` (made if missing), with its WAL if one was left; the
    copy's path. Copy only a file no connection has open (a finished run's: each transaction detaches)."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in (path, path.with_name(path.name + ".wal")):
        if part.exists():
            shutil.copy(part, folder / part.name)
    return folder / path.name


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """End a child the tests started: SIGTERM, then SIGKILL if it is still there `timeout_s` later.

    A child that already exited is only reaped. The kill is the last resort for a child a loaded host left
    unscheduled (or one that handles SIGTERM slowly): a test's cleanup must not hang on it.
    """
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


def failures(result: dg.ExecuteInProcessResult) -> list[str]:
    """The text of every failure event of a run: event messages, error messages and their causes."""
    texts = []
    for event in result.all_events:
        if not event.is_failure:
            continue
        texts.append(event.message or "")
        error = getattr(event.event_specific_data, "error", None)
        while error is not None:
            texts.append(error.to_string())
            error = error.cause
    return texts


class StampedBudget:
    """A `RateBudget` that also notes when each of its requests was let go (epoch seconds), for tests and
    benchmarks that check how two processes' requests interleave. With `stamps`, each time is also appended
    to that file as it happens, so a process stopped mid-run still tells what it sent."""

    def __init__(self, budget: Any, stamps: Path | None = None) -> None:
        self.budget = budget
        self.sent_at: list[float] = []
        self._stamps = stamps.open("a", buffering=1) if stamps is not None else None

    def acquire(self) -> None:
        self.budget.acquire()
        sent = time.time()
        self.sent_at.append(sent)
        if self._stamps is not None:
            self._stamps.write(f"{sent!r}\n")

    def observe(self, status: int, headers: Mapping[str, str], seconds: float) -> None:
        self.budget.observe(status, headers, seconds)


def budgeted_sync(
    settings: Settings,
    patients: Sequence[str],
    start: date,
    end: date,
    *,
    run_id: str,
    max_workers: int = 16,
    stamps: Path | None = None,
) -> dict[str, Any]:
    """`sync_patients` as a run does it: every client paced by the application's shared `RateBudget` (under
    `settings.lock_dir`, or in PostgreSQL with OURA_ASSETS_COORDINATION / OURA_ASSETS_RATE_BUDGET), patients
    in flight following the latency seen. Returns what happened: requests sent, 429s received, each
    patient's status, when each request went (also line by line to `stamps`, when given)."""
    from oura_assets import coordination
    from oura_assets.oura.client import RetryPolicy
    from oura_assets.oura.rate_budget import RateBudget
    from oura_assets.sync import RefetchPolicy, sync_patients

    store = wh.Warehouse(settings.warehouse_path)
    oauth = OuraOAuthApp.from_settings(settings)
    cipher = TokenCipher(settings.token_keys)
    with RateBudget.from_settings(settings) as budget:
        stamped = StampedBudget(budget, stamps)

        def client_for(patient_id: str) -> OuraClient:
            tokens = PatientTokens(
                patient_id=patient_id,
                warehouse=store,
                cipher=cipher,
                oauth_app=oauth,
                lock_dir=settings.lock_dir,
                coordination=coordination.from_settings(settings),  # as a run's resource builds it
            )
            return OuraClient(
                settings.api_base_url, tokens, retry=RetryPolicy(wait_budget_s=120.0), budget=stamped
            )  # type: ignore[arg-type]

        outcome = sync_patients(
            patients=patients,
            client_for=client_for,
            warehouse=store,
            start=start,
            end=end,
            run_id=run_id,
            max_workers=max_workers,
            purpose=f"budgeted sync {run_id}",
            refetch=RefetchPolicy(passes=0),
            concurrency=budget.suggested_workers,
        )
        return {
            "finished_at": time.time(),
            "requests": budget.requests,
            "rate_limited": budget.rate_limited,
            "statuses": {r.patient_id: r.status for r in outcome.results},
            "sent_at": stamped.sent_at,
        }


def peak_in_window(times: Sequence[float], window_s: float) -> int:
    """The most of `times` (epoch seconds) inside any window of `window_s`: what a sliding-window limit
    would count at its worst moment (Oura's fixed windows alone could see twice their limit across a
    boundary, so a fixed-window count would say nothing about pacing)."""
    ordered = sorted(times)
    best, low = 0, 0
    for high, at in enumerate(ordered):
        while ordered[low] <= at - window_s:
            low += 1
        best = max(best, high - low + 1)
    return best


def shares_while_all_active(turns: Sequence[Sequence[float]]) -> list[float]:
    """Each party's fraction of the turns taken while every party was taking turns (from the last one's
    first turn to the first one's last): 1/n each when a shared budget is fair."""
    begin, end = max(min(t) for t in turns), min(max(t) for t in turns)
    counts = [sum(begin <= at <= end for at in t) for t in turns]
    total = sum(counts)
    return [count / total if total else 0.0 for count in counts]
