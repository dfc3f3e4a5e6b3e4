"""Syncing patients over a day range: fetch from Oura, then mirror it into the raw tables.

Kept apart from Dagster so the fetch-and-land step and the run around it (a few patients at a time, one
patient's failure isolated from the others, the connection's status, the rule that decides whether the run
failed) can be tested, benchmarked and reused on their own; the raw asset only wires resources to
`sync_patients` and reports its `RunOutcome`.
All HTTP happens before the warehouse lock is taken; the writes for one patient land in one transaction, so
a patient is never half-written. What a failure means for the run (the patient's problem, or ours) is decided
by its kind, not by where it was raised: `sync_errors.py` holds those kinds and the screening of fetched
heart-rate samples.
"""

from __future__ import annotations

import logging
import time as clock
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import duckdb
import pyarrow as pa

from oura_assets import domain, ledger
from oura_assets import warehouse as wh
from oura_assets.day_status_writer import write_day_status
from oura_assets.domain import RAW_COLLECTIONS
from oura_assets.oura.client import (
    OuraClient,
    OuraError,
    OuraRateLimited,
)
from oura_assets.shards import Shard, select
from oura_assets.sync_errors import (
    OURA_UNAVAILABLE_CODES,
    SyncError,
    classify,
    collection_statuses,
    forbidden_with_scope,
    scope_missing_error,
    screen_columns,
    sync_status,
)
from oura_assets.sync_outcome import PatientSyncResult, RunLog, RunOutcome
from oura_assets.tokens import ReconnectRequired
from oura_assets.warehouse.group_writer import GroupWriter, group_size, yield_to_the_writer

log = logging.getLogger(__name__)

# The raw tables' collections, in fetch order (domain.py owns the list).
ALL_COLLECTIONS = RAW_COLLECTIONS

MAX_HELD_BYTES = 256 * 2**20
"""At most this much fetched heart rate (Arrow columns) waits for a run's writer before fetching pauses:
~75 patients at 90 days (~3.5 MB each), ~15 at a year, whatever the bound in patients allows."""


@dataclass(frozen=True)
class RefetchPolicy:
    """Later passes of the same run over the collections that still failed after the client's own retries.

    The client retries one request a few times within seconds; an outage of a minute outlasts that. So a
    collection that failed with `OURA_UNAVAILABLE_CODES` is fetched again, up to `passes` more times, after a
    cool-down: the last `Retry-After` Oura sent (capped at `max_cool_down_s`), else `cool_down_s`. Only
    then is the patient called partial. `sleep` is injectable so tests need not wait.
    """

    passes: int = 2
    cool_down_s: float = 5.0
    max_cool_down_s: float = 60.0
    sleep: Callable[[float], None] = field(default=clock.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.passes < 0 or self.cool_down_s < 0 or self.max_cool_down_s < 0:
            raise ValueError(f"RefetchPolicy values must not be negative: {self}")

    def cool_down(self, retry_after_s: float | None) -> float:
        """Seconds to wait before the next pass: Oura's last `Retry-After` when it sent one."""
        wait = self.cool_down_s if retry_after_s is None else max(retry_after_s, 0.0)
        return min(wait, self.max_cool_down_s)


def heartrate_window(start: date, end: date) -> tuple[datetime, datetime]:
    """The UTC instants that cover local days [start, end] for any UTC offset (-12:00 to +14:00).

    Heart-rate samples are assigned to the patient's local calendar day later, once the day's offset is known
    from the daily documents, so the fetch has to cover a day on each side.
    """
    return (
        datetime.combine(start - timedelta(days=1), time(), tzinfo=UTC),
        datetime.combine(end + timedelta(days=2), time(), tzinfo=UTC),
    )


def _fetch(
    client: OuraClient, collection: str, start: date, end: date
) -> tuple[list[dict[str, Any]] | pa.Table, list[SyncError]]:
    """One collection's documents (or heart-rate samples, as columns) for local days [start, end], and what
    was screened out of them."""
    if collection == "heartrate":
        return screen_columns(client.heartrate_columns(*heartrate_window(start, end)))
    batch = client.documents(collection, start, end)
    rejected = [SyncError("rejected_document", r.reason, collection) for r in batch.rejected]
    return batch.documents, rejected


@dataclass(frozen=True)
class Landing:
    """One patient's fetch, ready to land: its raw windows and its result go in one transaction (`land`)."""

    patient_id: str
    start: date
    end: date
    fetched: dict[str, list[dict[str, Any]] | pa.Table]
    status: str
    errors: list[SyncError]
    statuses: dict[str, tuple[str, str]]

    def land(
        self, conn: duckdb.DuckDBPyConnection, *, stored_heartrate: int | None = None
    ) -> PatientSyncResult:
        """Mirror the fetched collections into the raw tables on `conn` (inside the caller's transaction).

        `stored_heartrate`: the heart-rate samples stored in the patient's window, when the caller counted
        them in this transaction (`sync_patients`: once for the writer's group)."""
        fetched_at = datetime.now(UTC)
        rows: dict[str, int] = {}
        changes = wh.DocumentChanges()
        for collection, documents in self.fetched.items():
            if collection == "heartrate":
                low, high = heartrate_window(self.start, self.end)
                rows[f"oura_raw.{collection}"] = wh.replace_raw_heartrate_columns(
                    conn, self.patient_id, low, high, documents, fetched_at, stored=stored_heartrate
                )
            else:
                written = wh.mirror_raw_documents(
                    conn, collection, self.patient_id, self.start, self.end, documents, fetched_at
                )
                rows[f"oura_raw.{collection}"] = written.written
                changes += written
        return PatientSyncResult(
            self.patient_id, self.status, rows, self.errors, changes.as_dict(), self.statuses
        )

    def busy(self, exc: wh.WarehouseBusy) -> PatientSyncResult:
        """The result when the warehouse could not be had to land it."""
        return PatientSyncResult(
            self.patient_id, "failed", {}, [*self.errors, SyncError("warehouse_busy", str(exc))]
        )


def sync_patient(
    *,
    patient_id: str,
    client: OuraClient,
    warehouse: wh.WarehouseAccess,
    start: date,
    end: date,
    collections: Iterable[str] = ALL_COLLECTIONS,
    purpose: str = "sync",
    refetch: RefetchPolicy = RefetchPolicy(),
    record: Callable[[duckdb.DuckDBPyConnection, PatientSyncResult], None] | None = None,
    granted_scopes: tuple[str, ...] | None = None,
) -> PatientSyncResult:
    """Fetch `collections` for local days [start, end] and replace the patient's raw window with them.

    A collection Oura could not serve is fetched again in later passes (`refetch`) before it counts as
    failed; a collection that failed keeps what earlier runs landed in its raw table. `record(conn, result)`,
    when given, is called inside the transaction that lands the rows, so the rows and what is recorded about
    them commit together, in one hold of the warehouse lock instead of two; it is not called when nothing
    was landed.

    A collection whose scope is not among `granted_scopes` (the connection's; None: unknown) is not asked
    for: Oura would answer 403 [spec]. It is skipped with the reason (`scope_missing`, in the result's
    `collections`), and the patient's sync can still succeed. Oura answers 403 both for a scope not granted
    and for an expired membership [spec]: every collection refused is the membership
    (`subscription_expired`); one refused while others answer, its scope granted, is `forbidden` for that
    collection alone. Neither fails the patient while something landed.
    """
    fetched = fetch_patient(
        patient_id=patient_id,
        client=client,
        start=start,
        end=end,
        collections=collections,
        refetch=refetch,
        granted_scopes=granted_scopes,
    )
    if isinstance(fetched, PatientSyncResult):
        return fetched
    try:
        for attempt in warehouse.attempts(f"{purpose}: raw documents for one patient"):
            with attempt as conn:
                landed = fetched.land(conn)
                if record is not None:
                    record(conn, landed)
        # Returned only here, after the loop: a try that lost a DuckLake conflict at COMMIT runs again.
        return landed
    except wh.WarehouseBusy as exc:
        return fetched.busy(exc)


def fetch_patient(
    *,
    patient_id: str,
    client: OuraClient,
    start: date,
    end: date,
    collections: Iterable[str] = ALL_COLLECTIONS,
    refetch: RefetchPolicy = RefetchPolicy(),
    granted_scopes: tuple[str, ...] | None = None,
) -> Landing | PatientSyncResult:
    """`sync_patient`'s fetch: a `Landing` when something was fetched, else the patient's result (nothing to
    land). No warehouse: a run's fetch threads never wait for the writer lock (`sync_patients`)."""
    asked = [c for c in ALL_COLLECTIONS if c in set(collections)]
    skipped = [
        scope_missing_error(c, scope)
        for c in asked
        if (scope := domain.missing_scope(c, granted_scopes)) is not None
    ]
    wanted = [c for c in asked if c not in {e.collection for e in skipped}]
    fetched: dict[str, list[dict[str, Any]] | pa.Table] = {}
    failures: dict[str, tuple[SyncError, OuraError]] = {}
    notes: list[SyncError] = []
    pending = wanted
    for attempt in range(refetch.passes + 1):
        if attempt:
            retry_after = [
                exc.retry_after_s
                for _, exc in failures.values()
                if isinstance(exc, OuraRateLimited) and exc.retry_after_s is not None
            ]
            wait = refetch.cool_down(max(retry_after, default=None))
            log.warning(
                "patient %s: %s still failing (%s); fetching again in %.1f s (pass %d of %d)",
                patient_id,
                ", ".join(pending),
                ", ".join(sorted({failures[c][0].code for c in pending})),
                wait,
                attempt + 1,
                refetch.passes + 1,
            )
            refetch.sleep(wait)
        try:
            for collection in pending:
                try:
                    fetched[collection], screened = _fetch(client, collection, start, end)
                    notes.extend(screened)
                    failures.pop(collection, None)
                except ReconnectRequired:
                    raise
                except OuraError as exc:
                    failures[collection] = (classify(exc, collection), exc)
        except ReconnectRequired as exc:
            # The refresh token was refused: nothing more can be fetched for this patient until they
            # reconnect, and retrying would only spend requests. tokens.py has already flagged the connection.
            return PatientSyncResult(patient_id, "failed", {}, [SyncError("reconnect_required", str(exc))])
        pending = [c for c in wanted if c in failures and failures[c][0].code in OURA_UNAVAILABLE_CODES]
        if not pending:
            break
    errors = [*notes, *(failures[c][0] for c in wanted if c in failures)]

    forbidden = [e for e in errors if e.code == "forbidden"]
    if wanted and len(forbidden) == len(wanted):
        errors = [SyncError("subscription_expired", forbidden[0].message)]
    else:
        if granted_scopes is None:
            # The connection's grant is not known (stored without Oura's `scope` answer): a lone 403 on a
            # collection that needs a scope is read as that scope not granted, as a known grant would have
            # said, so the collection is skipped and the patient is not called partial every night for it.
            unknown_grant = [
                e for e in forbidden if domain.COLLECTION_SCOPES.get(e.collection or "") is not None
            ]
            skipped = [
                *skipped,
                *(
                    scope_missing_error(e.collection or "", domain.COLLECTION_SCOPES[e.collection or ""])
                    for e in unknown_grant
                ),
            ]
            errors = [e for e in errors if e not in unknown_grant]
            wanted = [c for c in wanted if c not in {e.collection for e in unknown_grant}]
        errors = [
            forbidden_with_scope(e, domain.COLLECTION_SCOPES.get(e.collection or ""))
            if e.code == "forbidden"
            else e
            for e in errors
        ]
    # A skipped collection is not an error of the sync (the patient chose not to share it): it is said in
    # `wearable_collection_status`, not in the sync event's errors.
    statuses = collection_statuses(asked, fetched, [*skipped, *errors])

    if fetched:
        status = sync_status(len(fetched), len(wanted), errors)
        return Landing(patient_id, start, end, fetched, status, errors, statuses)
    return PatientSyncResult(patient_id, sync_status(0, len(wanted), errors), {}, errors, {}, statuses)


def claim_patients(
    warehouse: wh.WarehouseAccess,
    *,
    run_id: str,
    patient_id: str | None = None,
    sync_ids: Sequence[str] = (),
    shard: Shard | None = None,
) -> list[str]:
    """The patients a run syncs (every active connection, or the one named; of those, only the ones in
    `shard` for a sharded run), marking its sync requests `running` in the same transaction."""
    for attempt in warehouse.attempts("list patients for a sync run"):
        with attempt as conn:
            active = (c.patient_id for c in wh.list_active_connections(conn, patient_id))
            patients = select(active, shard)
            ledger.claim_requests(conn, sync_ids, run_id=run_id)
    return patients


def _record_on(
    conn: duckdb.DuckDBPyConnection, run_id: str, result: PatientSyncResult, start: date, end: date
) -> None:
    """Record a patient's result and what it says about the connection, in the caller's transaction (the one
    that landed the patient's rows, when any landed)."""
    ledger.record_patient_result(
        conn,
        run_id=run_id,
        patient_id=result.patient_id,
        status=result.status,
        start_day=start,
        end_day=end,
        rows=result.rows,
        errors=[e.to_dict() for e in result.errors],
        documents=result.documents or None,
    )
    if not result.rows:
        # Nothing landed, and the normalized assets may not run at all (a run where every patient
        # failed is red): the patient's days are explained here, from what the warehouse already held.
        write_day_status(conn, patient_id=result.patient_id, start=start, end=end, run_id=run_id)
    if result.collections:
        wh.replace_collection_status(
            conn,
            result.patient_id,
            {c: wh.CollectionStatus(status, reason) for c, (status, reason) in result.collections.items()},
            start_day=start,
            end_day=end,
            updated_at=datetime.now(UTC),
        )
    if result.status != "failed":
        wh.mark_synced(conn, result.patient_id, datetime.now(UTC))
    elif any(e.code == "subscription_expired" for e in result.errors):
        wh.set_connection_status(
            conn, result.patient_id, "active", last_error="Oura membership expired (403)"
        )


def _held_bytes(fetched: Landing | PatientSyncResult) -> int:
    table = fetched.fetched.get("heartrate") if isinstance(fetched, Landing) else None
    return table.nbytes if isinstance(table, pa.Table) else 0


def granted_scopes(warehouse: wh.WarehouseAccess, patients: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The scopes each patient's connection holds (from Oura's token answer), for those whose are known."""
    if not patients:
        return {}
    with warehouse.connect("read granted scopes") as conn:
        connections = [wh.get_connection(conn, patient_id) for patient_id in patients]
    return {c.patient_id: c.scopes for c in connections if c is not None and c.scopes}


def sync_patients(
    *,
    patients: Sequence[str],
    client_for: Callable[[str], OuraClient],
    warehouse: wh.WarehouseAccess,
    start: date,
    end: date,
    run_id: str,
    collections: Iterable[str] = ALL_COLLECTIONS,
    max_workers: int = 4,
    purpose: str = "sync",
    progress: RunLog = log,
    refetch: RefetchPolicy = RefetchPolicy(),
    concurrency: Callable[[int], int] | None = None,
) -> RunOutcome:
    """Sync each of `patients` over local days [start, end], several at a time, and record each one's result.

    One patient's failure, even an unexpected exception, is recorded for that patient (`internal_error`, with
    the traceback in `progress`) and never costs the others their sync. `client_for` builds a patient's Oura
    client; `purpose` names the run in the warehouse lock's holder; `refetch` says how often and after what
    cool-down a collection Oura could not serve is fetched again before its patient is called partial.
    `concurrency(cap)` says how many patients to keep in flight (at most `cap` = `max_workers`), asked again
    as each one finishes, so it can follow the request cycle seen (`RateBudget.suggested_workers`); without
    it, `max_workers` patients are in flight.
    """
    collections = list(collections)
    warehouse = warehouse.reporting_waits_to(progress)  # a long wait for the file shows in the run's log
    progress.info(f"syncing {len(patients)} patient(s), days {start}..{end}, collections {collections}")
    scopes = granted_scopes(warehouse, patients)

    def fetch_one(patient_id: str) -> tuple[Landing | PatientSyncResult, str | None]:
        try:
            fetched = fetch_patient(
                patient_id=patient_id,
                client=client_for(patient_id),
                start=start,
                end=end,
                collections=collections,
                refetch=refetch,
                granted_scopes=scopes.get(patient_id),
            )
            trace = None
        except Exception as exc:  # one patient's bug must not cost the others their sync
            fetched = PatientSyncResult(
                patient_id, "failed", {}, [SyncError("internal_error", type(exc).__name__)]
            )
            trace = traceback.format_exc()
        return fetched, trace

    # The group's stored heart-rate counts, one scan for the group before its jobs run (`count_stored`),
    # each taken by its landing; a patient twice in a group counts its own (the first changes the window).
    stored: dict[str, int] = {}

    def count_stored(conn: duckdb.DuckDBPyConnection, abouts: list[Any]) -> None:
        hr = [a for a in abouts if isinstance(a, Landing) and "heartrate" in a.fetched]
        ids = [a.patient_id for a in hr]
        stored.clear()
        stored.update(
            wh.stored_heartrate_counts(
                conn,
                {a.patient_id: heartrate_window(a.start, a.end) for a in hr if ids.count(a.patient_id) == 1},
            )
        )

    def land(landing: Landing) -> Callable[[duckdb.DuckDBPyConnection], PatientSyncResult]:
        def write(conn: duckdb.DuckDBPyConnection) -> PatientSyncResult:
            landed = landing.land(conn, stored_heartrate=stored.pop(landing.patient_id, None))
            _record_on(conn, run_id, landed, start, end)
            return landed

        return write

    def record_only(result: PatientSyncResult) -> Callable[[duckdb.DuckDBPyConnection], PatientSyncResult]:
        def write(conn: duckdb.DuckDBPyConnection) -> PatientSyncResult:
            _record_on(conn, run_id, result, start, end)
            return result

        return write

    results: list[PatientSyncResult] = []
    cap = max(1, min(max_workers, len(patients)))
    queue = list(patients)
    fetching: dict[Future[tuple[Landing | PatientSyncResult, str | None]], str] = {}
    # A write's future and what it writes: a patient's landing, or a result to record (nothing landed).
    writing: dict[Future[PatientSyncResult], Landing | PatientSyncResult] = {}
    began_at: dict[str, float] = {}

    def finish(result: PatientSyncResult) -> None:
        results.append(result)
        codes = ", ".join(e.code for e in result.errors) or "no errors"
        took = clock.monotonic() - began_at[result.patient_id]
        progress.info(
            f"patient {len(results)} of {len(patients)} ({result.patient_id}): "
            f"{result.status} ({codes}), {sum(result.rows.values())} rows in {took:.1f}s"
        )

    # Patients are fetched many at a time: a run is bound by its rate budget, not by Oura's latency or by us.
    # How many are in flight is asked again as each one finishes, so it follows the request cycle the budget
    # sees. What they fetched is landed by one writer thread, several patients per transaction (rows and
    # result together, each patient whole): a fetch thread never waits for the warehouse lock, so fetching
    # goes on while a group commits, and the lock's fixed cost is paid per group, not per patient.
    max_group = group_size(warehouse)
    # Fetched data waiting for the writer is held in memory: a writer that falls behind pauses the fetching.
    # The bound leaves room for two whole groups beside the fetches in flight: a group's commit and checkpoint
    # cost far less than in proportion to its rows (measured alone at 90 days a patient: in groups of 5, the
    # bound's 2 x `cap` before, ~2.5 us of CPU a heart-rate sample; in groups of 25, ~0.8 us), and while the
    # writer lands one group the fetches fill the next. With room for one group only, the fetch threads sat
    # idle 63 % of a heart-rate load's wall time, waiting for the writer to make room.
    backlog, held = cap + 2 * max(max_group, cap), 0  # held: heart rate's bytes in `writing` (MAX_HELD_BYTES)
    with (
        ThreadPoolExecutor(cap, thread_name_prefix="oura-patient", initializer=yield_to_the_writer) as pool,
        GroupWriter(
            warehouse,
            lambda n: f"{purpose}: raw documents for {n} patient(s)",
            max_group=max_group,
            prepare=count_stored,
            more_coming=lambda: bool(fetching),
        ) as writer,
    ):
        while queue or fetching or writing:
            target = cap if concurrency is None else max(1, min(cap, concurrency(cap)))
            while queue and len(fetching) < target and len(writing) < backlog and held < MAX_HELD_BYTES:
                patient_id = queue.pop(0)
                began_at[patient_id] = clock.monotonic()
                fetching[pool.submit(fetch_one, patient_id)] = patient_id
            done, _ = wait([*fetching, *writing], return_when=FIRST_COMPLETED)
            for future in done:
                if future in fetching:
                    del fetching[future]
                    fetched, trace = future.result()
                    if trace:
                        progress.error(f"patient {fetched.patient_id}: unexpected error\n{trace}")
                    write = land(fetched) if isinstance(fetched, Landing) else record_only(fetched)
                    writing[writer.submit(write, about=fetched)] = fetched
                    held += _held_bytes(fetched)
                    continue
                source = writing.pop(future)
                held -= _held_bytes(source)
                try:
                    finish(future.result())
                except wh.WarehouseBusy as exc:
                    if not isinstance(source, Landing):
                        raise  # its failure could not be recorded either: the run cannot go on
                    busy = source.busy(exc)
                    writing[writer.submit(record_only(busy))] = busy
                except Exception as exc:
                    if not isinstance(source, Landing):
                        raise
                    progress.error(f"patient {source.patient_id}: unexpected error\n{traceback.format_exc()}")
                    failed = PatientSyncResult(
                        source.patient_id, "failed", {}, [SyncError("internal_error", type(exc).__name__)]
                    )
                    writing[writer.submit(record_only(failed))] = failed
    return RunOutcome(results)
