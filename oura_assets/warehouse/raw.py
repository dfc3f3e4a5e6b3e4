"""The `oura_raw` tables: Oura's documents and heart-rate samples as Oura sent them, mirrored per window.

Writing a patient's window makes the table hold exactly what Oura returned for it (documents Oura no longer
returns are deleted), so a re-fetch replaces older versions and re-running a range changes nothing.
Oura revises documents after the fact (a score recomputed hours later, under the same `id`): a document row
counts its content changes in `revision`, and the version it replaced, or a document Oura stopped returning,
is kept in `oura_raw.document_revisions`, so a revised score stays visible in SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from oura_assets.domain import DOCUMENT_COLLECTIONS, check_document_collection
from oura_assets.warehouse.dialect import guard
from oura_assets.warehouse.staging import mirror, stage
from oura_assets.warehouse.values import day_window, dumps, to_day, utc

if TYPE_CHECKING:  # only an annotation here: DuckDB's `.pl()` imports polars itself, when a frame is read
    import polars as pl


SUPERSEDED = (
    "SELECT 1 FROM oura_raw.document_revisions h "
    "WHERE h.collection = ? AND h.patient_id = {alias}.patient_id AND h.id = {alias}.id "
    "AND h.revision = {revision} AND h.superseded_at = ?"
)
"""A version already kept in the history (its key), as a NOT EXISTS subquery: the history is written the same
way on a DuckDB file and on a DuckLake, which has no key to lean on (`ON CONFLICT` needs one). The raw table's
own window write conflicts with any concurrent write of the same collection on a lake, so the check holds."""


@dataclass(frozen=True)
class DocumentChanges:
    """What one window write did to a collection's documents, compared with what the table held."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0

    @property
    def written(self) -> int:
        """Documents the table holds for the write: new, changed and unchanged (re-fetched) alike."""
        return self.new + self.changed + self.unchanged

    def __add__(self, other: DocumentChanges) -> DocumentChanges:
        return DocumentChanges(
            self.new + other.new,
            self.changed + other.changed,
            self.unchanged + other.unchanged,
            self.deleted + other.deleted,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
        }


def replace_raw_documents(
    conn: duckdb.DuckDBPyConnection,
    collection: str,
    patient_id: str,
    start_day: date,
    end_day: date,
    documents: Iterable[Mapping[str, Any]],
    fetched_at: datetime,
) -> int:
    """Mirror Oura's `collection` for the patient's days [start_day, end_day]; returns the documents written.

    `mirror_raw_documents`, counting only what the table holds afterwards.
    """
    return mirror_raw_documents(
        conn, collection, patient_id, start_day, end_day, documents, fetched_at
    ).written


def mirror_raw_documents(
    conn: duckdb.DuckDBPyConnection,
    collection: str,
    patient_id: str,
    start_day: date,
    end_day: date,
    documents: Iterable[Mapping[str, Any]],
    fetched_at: datetime,
) -> DocumentChanges:
    """Mirror Oura's `collection` for the patient's days [start_day, end_day]; returns what changed.

    Rows of the window that Oura no longer returns are deleted; every given document replaces its older
    version by `id`, including one whose `day` lies outside the window. Each document needs `id` and `day`.
    A document whose content differs from the stored one (compared as DuckDB's JSON text) gets `revision` + 1
    and a new `last_changed_at`, and the stored version goes to `oura_raw.document_revisions`; an identical
    one only gets a new `fetched_at`. Deleted rows go to the history as well.
    """
    table = f"oura_raw.{check_document_collection(collection)}"
    start, end = day_window(start_day, end_day)
    records = []
    for doc in documents:
        if not isinstance(doc, Mapping) or doc.get("id") in (None, "") or not doc.get("day"):
            raise ValueError(f"{collection}: a document needs an `id` and a `day`, got {str(doc)[:200]}")
        try:
            day = to_day(doc["day"])
        except (TypeError, ValueError):
            raise ValueError(f"{collection} {doc['id']}: `day` {doc['day']!r} is not a date") from None
        records.append({"id": str(doc["id"]), "day": day, "document": doc})
    at = utc(fetched_at)
    fetched_ids = [r["id"] for r in records]
    # One statement stages the fetched documents (parsed by DuckDB from one JSON array, the last one per id
    # kept), sets each beside the version the table holds (if any), and adds the window's stored documents
    # that Oura no longer returned: what each one is to the table is then a count away, and the history
    # is written only when something in it changed (the usual nightly re-fetch changes nothing). A landing
    # is ~10 statements per collection instead of ~15, and DuckDB's per-statement cost dominated it.
    # The stored versions are read as the window's rows (pruned to its row groups by `day`) plus the
    # fetched ids stored on another day (a document whose day moved), named as a list parameter so DuckDB
    # filters the scan by it and reads documents only for those rows. Joining the whole table by id read
    # every document of the collection instead, a cost that grew with the history: on a 1,000-patient,
    # 1-year warehouse this statement took 167 ms for one patient's `sleep` re-fetch, now 11 ms.
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _staged_compared AS
        WITH fetched AS (
            SELECT ?::VARCHAR AS patient_id, value->>'id' AS id, CAST(value->>'day' AS DATE) AS day,
                   value->'document' AS document, ?::TIMESTAMPTZ AS fetched_at
            FROM json_each(?::JSON)
            QUALIFY row_number() OVER (PARTITION BY value->>'id' ORDER BY CAST(key AS BIGINT) DESC) = 1
        ),
        stored AS (
            SELECT * FROM {table} WHERE patient_id = ? AND day BETWEEN ? AND ?
            UNION ALL
            SELECT * FROM {table}
            WHERE patient_id = ? AND list_contains(?::VARCHAR[], id) AND day NOT BETWEEN ? AND ?
        )
        SELECT s.*, t.day AS old_day, t.document AS old_document, t.fetched_at AS old_fetched_at,
               t.first_seen_at AS old_first_seen_at, t.last_changed_at AS old_last_changed_at,
               t.revision AS old_revision,
               CASE WHEN t.id IS NULL THEN 'new'
                    WHEN t.document::VARCHAR IS DISTINCT FROM s.document::VARCHAR THEN 'changed'
                    ELSE 'unchanged' END AS change
        FROM fetched s LEFT JOIN stored t ON t.id = s.id
        UNION ALL BY NAME
        SELECT patient_id, id, NULL AS day, NULL AS document, NULL AS fetched_at, day AS old_day,
               document AS old_document, fetched_at AS old_fetched_at, revision AS old_revision,
               'deleted' AS change
        FROM stored t
        WHERE day BETWEEN ? AND ?
          AND NOT EXISTS (SELECT 1 FROM fetched s WHERE s.id = t.id)
        """,  # noqa: S608 (table name is a checked constant)
        [
            *(patient_id, at, dumps(records)),  # fetched
            *(patient_id, start, end, patient_id, fetched_ids, start, end),  # stored
            *(start, end),  # deleted
        ],
    )
    counts = dict(conn.execute("SELECT change, count(*) FROM _staged_compared GROUP BY change").fetchall())
    if not counts:
        # Nothing fetched and nothing stored in the window (a collection the patient does not use): the
        # mirror would change nothing, so its statements are skipped.
        conn.execute("DROP TABLE _staged_compared")
        return DocumentChanges()
    deleted = 0
    if counts.get("changed", 0) or counts.get("deleted", 0):
        # The version replaced (or dropped), unless the history holds it already (see SUPERSEDED).
        (deleted,) = conn.execute(
            f"""
            SELECT count(*) FILTER (WHERE change = 'deleted') FROM _staged_compared c
            WHERE change IN ('changed', 'deleted')
              AND NOT EXISTS ({SUPERSEDED.format(alias="c", revision="c.old_revision")})
            """,  # noqa: S608
            [collection, at],
        ).fetchone()
        conn.execute(
            f"""
            INSERT INTO oura_raw.document_revisions BY NAME
            SELECT ? AS collection, patient_id, id, old_revision AS revision, old_day AS day,
                   old_document AS document, old_fetched_at AS fetched_at, ? AS superseded_at, change
            FROM _staged_compared c WHERE change IN ('changed', 'deleted')
              AND NOT EXISTS ({SUPERSEDED.format(alias="c", revision="c.old_revision")})
            """,  # noqa: S608
            [collection, at, collection, at],
        )
    if counts.get("changed", 0):
        # A document Oura now dates elsewhere than the stored version, which lies outside the window: that
        # row goes by its key here, as `mirror` replaces only the window and the staged rows outside it (it
        # used to stay, and the new version's insert broke the primary key on every later landing).
        moved = conn.execute(
            "SELECT list(id) FROM _staged_compared WHERE change = 'changed' AND old_day NOT BETWEEN ? AND ?",
            [start, end],
        ).fetchone()[0]
        if moved:
            guard(conn, table)
            conn.execute(
                f"DELETE FROM {table} WHERE patient_id = ? AND list_contains(?::VARCHAR[], id) "  # noqa: S608
                "AND day NOT BETWEEN ? AND ?",
                [patient_id, moved, start, end],
            )
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE _staged_documents AS
        SELECT patient_id, id, day, document, fetched_at,
               coalesce(old_first_seen_at, fetched_at) AS first_seen_at,
               CASE change WHEN 'unchanged' THEN old_last_changed_at ELSE fetched_at END AS last_changed_at,
               CASE change WHEN 'new' THEN 0 WHEN 'changed' THEN old_revision + 1 ELSE old_revision END
                   AS revision
        FROM _staged_compared WHERE change <> 'deleted'
        """
    )
    conn.execute("DROP TABLE _staged_compared")
    mirror(
        conn,
        table,
        "_staged_documents",
        ("patient_id", "id"),
        "patient_id = ? AND day BETWEEN ? AND ?",
        [patient_id, start, end],
    )
    return DocumentChanges(
        new=counts.get("new", 0),
        changed=counts.get("changed", 0),
        unchanged=counts.get("unchanged", 0),
        deleted=int(deleted),
    )


def read_raw_documents(
    conn: duckdb.DuckDBPyConnection, collection: str, patient_id: str, start_day: date, end_day: date
) -> list[dict[str, Any]]:
    """The patient's stored documents of `collection` with `day` in [start_day, end_day], by day then id."""
    table = f"oura_raw.{check_document_collection(collection)}"
    rows = conn.execute(
        f"SELECT document FROM {table} WHERE patient_id = ? AND day BETWEEN ? AND ? ORDER BY day, id",  # noqa: S608
        [patient_id, to_day(start_day), to_day(end_day)],
    ).fetchall()
    return [json.loads(document) for (document,) in rows]


def read_raw_documents_of(
    conn: duckdb.DuckDBPyConnection,
    collection: str,
    patient_ids: Sequence[str],
    start_day: date,
    end_day: date,
) -> dict[str, list[dict[str, Any]]]:
    """`read_raw_documents` for several patients in one query: each patient's documents, by day then id."""
    table = f"oura_raw.{check_document_collection(collection)}"
    rows = conn.execute(
        f"SELECT patient_id, document FROM {table} "  # noqa: S608
        "WHERE list_contains(?::VARCHAR[], patient_id) AND day BETWEEN ? AND ? ORDER BY patient_id, day, id",
        [list(patient_ids), to_day(start_day), to_day(end_day)],
    ).fetchall()
    found: dict[str, list[dict[str, Any]]] = {patient_id: [] for patient_id in patient_ids}
    for patient_id, document in rows:
        found[patient_id].append(json.loads(document))
    return found


def replace_raw_heartrate(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start: datetime,
    end: datetime,
    samples: Iterable[Mapping[str, Any]],
    fetched_at: datetime,
) -> int:
    """Mirror Oura's heart rate for the instants [start, end); returns the distinct samples written.

    Samples are keyed by (timestamp instant, source): "…+02:00" and the same instant in "Z" are one sample,
    and the last one given wins. A timestamp without an offset is taken to be UTC.
    """
    if utc(end) < utc(start):
        raise ValueError(f"heart-rate window ends ({end}) before it starts ({start})")
    samples = samples if isinstance(samples, Sequence) else list(samples)
    stage(
        conn,
        "_staged_heartrate",
        "?::VARCHAR AS patient_id, CAST(value->>'timestamp' AS TIMESTAMPTZ) AS timestamp, "
        "value->>'source' AS source, CAST(value->>'bpm' AS INTEGER) AS bpm, value AS document, "
        "?::TIMESTAMPTZ AS fetched_at",
        samples,
        [patient_id, utc(fetched_at)],
        last_per=["timestamp", "source"],
    )
    (incomplete,) = conn.execute(
        "SELECT count(*) FROM _staged_heartrate WHERE timestamp IS NULL OR source IS NULL"
    ).fetchone()
    if incomplete:
        conn.execute("DROP TABLE _staged_heartrate")
        raise ValueError(f"heartrate: {incomplete} sample(s) lack a `timestamp` or a `source`")
    return _mirror_heartrate(conn, patient_id, start, end)


def _mirror_heartrate(
    conn: duckdb.DuckDBPyConnection, patient_id: str, start: datetime, end: datetime
) -> int:
    """Make the patient's samples in [start, end) exactly the ones in `_staged_heartrate`; returns rows."""
    return mirror(
        conn,
        "oura_raw.heartrate",
        "_staged_heartrate",
        ("patient_id", "timestamp", "source"),
        "patient_id = ? AND timestamp >= ? AND timestamp < ?",
        [patient_id, utc(start), utc(end)],
    )


def replace_raw_heartrate_columns(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start: datetime,
    end: datetime,
    samples: pa.Table,
    fetched_at: datetime,
    *,
    stored: int | None = None,
) -> int:
    """`replace_raw_heartrate` for samples already parsed into columns; returns the samples written.

    `samples` has `timestamp` (aware), `source`, `bpm` and `document` (JSON text) with one row per
    (timestamp, source) (a repeat fails the write, with nothing written), as `oura.heartrate_pages` hands
    them over: DuckDB reads the Arrow columns as they are, so no sample passes through Python on its way in.
    `stored` is how many samples the table holds in the patient's window, when the caller counted them in
    this transaction (`stored_heartrate_counts`); else they are counted here.
    """
    if utc(end) < utc(start):
        raise ValueError(f"heart-rate window ends ({end}) before it starts ({start})")
    incomplete = samples.column("timestamp").null_count + samples.column("source").null_count
    if incomplete:
        raise ValueError(f"heartrate: {incomplete} sample(s) lack a `timestamp` or a `source`")
    repeated = _repeated_samples(samples)
    if repeated:
        raise ValueError(f"heartrate: {repeated} sample(s) repeat another's `timestamp` and `source`")
    if stored is None:
        stored = stored_heartrate_counts(conn, {patient_id: (start, end)})[patient_id]
    span = pc.min_max(samples.column("timestamp")).as_py() if samples.num_rows else None
    inside = span is None or (span["min"] >= utc(start) and span["max"] < utc(end))
    columns = (
        "?::VARCHAR AS patient_id, timestamp::TIMESTAMPTZ AS timestamp, source::VARCHAR AS source, "
        "bpm::INTEGER AS bpm, document::JSON AS document, ?::TIMESTAMPTZ AS fetched_at"
    )
    conn.register("_heartrate_columns", samples)
    try:
        if not stored and inside:
            # A window the table holds nothing of (a first sync, a backfill) and samples all inside it:
            # nothing to mirror and nothing to collide with, so a plain INSERT, without the staging copy and
            # the primary-key lookups of an upsert. On a DuckLake the table's write guard makes a concurrent
            # first sync of the same patient conflict, rather than land its samples a second time.
            guard(conn, "oura_raw.heartrate")
            (written,) = conn.execute(
                f"INSERT INTO oura_raw.heartrate BY NAME SELECT {columns} FROM _heartrate_columns",  # noqa: S608
                [patient_id, utc(fetched_at)],
            ).fetchone()
            return int(written)
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE _staged_heartrate AS SELECT {columns} FROM _heartrate_columns",  # noqa: S608
            [patient_id, utc(fetched_at)],
        )
    finally:
        conn.unregister("_heartrate_columns")
    return _mirror_heartrate(conn, patient_id, start, end)


def _repeated_samples(samples: pa.Table) -> int:
    """How many samples repeat an earlier one's (timestamp, source): the table has no primary key to refuse
    them (schema.py says why), so the write does. Samples in strictly increasing time (what
    `heartrate_pages` hands over, unless two sources share an instant) cannot repeat: two vectorized
    comparisons instead of grouping them."""
    timestamps = samples.column("timestamp")
    if samples.num_rows < 2 or pc.all(pc.less(timestamps[:-1], timestamps[1:])).as_py():
        return 0
    keys = samples.select(["timestamp", "source"])
    return samples.num_rows - keys.group_by(["timestamp", "source"]).aggregate([]).num_rows


def stored_heartrate_counts(
    conn: duckdb.DuckDBPyConnection, windows: Mapping[str, tuple[datetime, datetime]]
) -> dict[str, int]:
    """How many samples the table holds in each patient's window [start, end), one scan per distinct window.

    Why one scan for many: only the time filter lets DuckDB skip row groups (a row group holds many
    patients' rows of the same days), so counting one patient's window reads every patient's rows of it,
    and a count per patient made a run's cost grow with the square of its patients."""
    by_window: dict[tuple[datetime, datetime], list[str]] = {}
    for patient_id, (start, end) in windows.items():
        by_window.setdefault((utc(start), utc(end)), []).append(patient_id)
    counts: dict[str, int] = {}
    for (start, end), patient_ids in by_window.items():
        # One patient: an equality DuckDB can check against each row group's zone map.
        one = len(patient_ids) == 1
        which = "patient_id = ?" if one else "list_contains(?::VARCHAR[], patient_id)"
        rows = conn.execute(
            f"SELECT patient_id, count(*) FROM oura_raw.heartrate WHERE {which} "  # noqa: S608 (constants)
            "AND timestamp >= ? AND timestamp < ? GROUP BY patient_id",
            [patient_ids[0] if one else patient_ids, start, end],
        ).fetchall()
        counts.update(dict.fromkeys(patient_ids, 0))
        counts.update((patient_id, int(count)) for patient_id, count in rows)
    return counts


def read_raw_heartrate(
    conn: duckdb.DuckDBPyConnection, patient_id: str, start: datetime, end: datetime
) -> pl.DataFrame:
    """The patient's samples in [start, end) as a polars frame: timestamp (UTC), bpm, source; by time."""
    return conn.sql(
        "SELECT timestamp, bpm, source FROM oura_raw.heartrate "
        "WHERE patient_id = $patient_id AND timestamp >= $start AND timestamp < $end "
        "ORDER BY timestamp, source",
        params={"patient_id": patient_id, "start": utc(start), "end": utc(end)},
    ).pl()


def patients_with_raw_data(conn: duckdb.DuckDBPyConnection, start_day: date, end_day: date) -> list[str]:
    """Patients with any raw document on days [start_day, end_day], or heart rate within a day of them."""
    start, end = to_day(start_day), to_day(end_day)
    documents = " UNION ".join(
        f"SELECT patient_id FROM oura_raw.{c} WHERE day BETWEEN $start AND $end"  # noqa: S608 (constants)
        for c in DOCUMENT_COLLECTIONS
    )
    rows = conn.execute(
        f"SELECT patient_id FROM ({documents} UNION SELECT patient_id FROM oura_raw.heartrate "  # noqa: S608
        "WHERE timestamp >= $start::TIMESTAMPTZ - INTERVAL 1 DAY "
        "AND timestamp < $end::TIMESTAMPTZ + INTERVAL 2 DAY) ORDER BY patient_id",
        {"start": start, "end": end},
    ).fetchall()
    return [patient_id for (patient_id,) in rows]
