"""Refreshing a copy of the analytics snapshot with what changed since it was published (issue 10).

Recopying the whole warehouse after every run made the nightly run's cost grow with the history it holds.
Instead, `analytics.publish_snapshot(..., run_days=...)` copies the previous snapshot file aside (bytes, no
decoding; an encrypted file stays encrypted with the same key) and, in that copy, replaces only the rows of
the patient-days written since the previous publication; then the usual atomic rename. What is replaced:

- every patient-keyed table with a `day` (or, for heart rate, a `timestamp`): the rows of each changed
  patient over their changed days, padded by `DAY_PADDING` on each side (the heart-rate fetch reaches a day
  before and two after the local days it covers; replacing a row by its current self is harmless);
- every other published table (connections, events, collection statuses, horizons: small, per patient, not
  per day): whole;
- heart-rate samples the retention job dropped before its horizon: deleted from the copy too.

Which patient-days changed: every sync result recorded since the previous publication (`sync_results` holds
each run's patients and range: a failed run, an API sync, a webhook's run and a backfill all leave one), less
`SINCE_OVERLAP` for a result committed just after the previous copy began, plus the publishing run's own days
for every connected patient (a rebuild outside a sync run leaves no result). An erasure rewrites the
snapshot itself (`erase_from_snapshot`).

The refreshed copy must then hold as many rows per table as the warehouse: when it does not (something wrote
outside what the results say, a hand edit, a restore), the caller throws the copy away and copies the
warehouse whole, so a drift heals at the next publication instead of living on in the snapshot.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import duckdb

from oura_assets.warehouse.retention import RAW_HEARTRATE, retention_horizon

# A result recorded this long before the previous publication began is still taken as changed since: a
# transaction that stamped its result before the copy started but committed after (a DuckLake's, without the
# writer lock) is then never missed. Republishing an hour of results twice costs little.
SINCE_OVERLAP = timedelta(hours=1)
DAY_PADDING = timedelta(days=2)
_CHANGES = "snapshot_changes"  # a temporary table of the warehouse connection


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def changed_ranges(
    conn: duckdb.DuckDBPyConnection, since: datetime, run_days: tuple[date, date] | None
) -> dict[str, tuple[date, date]]:
    """Patient -> the days [first, last] written for them since `since` (not yet padded)."""
    ranges: dict[str, tuple[date, date]] = {
        patient: (first, last)
        for patient, first, last in conn.execute(
            "SELECT patient_id, min(start_day), max(end_day) FROM patient_graph.sync_results "
            "WHERE recorded_at >= ? GROUP BY patient_id",
            [since - SINCE_OVERLAP],
        ).fetchall()
    }
    if run_days is not None:
        for (patient,) in conn.execute(
            "SELECT DISTINCT patient_id FROM patient_graph.wearable_connections"
        ).fetchall():
            first, last = ranges.get(patient, run_days)
            ranges[patient] = (min(first, run_days[0]), max(last, run_days[1]))
    return ranges


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def refresh_tables(
    conn: duckdb.DuckDBPyConnection,
    catalog: str,
    tables: dict[str, list[str]],
    ranges: dict[str, tuple[date, date]],
) -> dict[str, int]:
    """Bring the published `tables` in the attached snapshot copy `catalog` up to date with the warehouse
    (`conn`'s own catalog) for `ranges`; returns the copy's rows per table."""
    padded = {p: (first - DAY_PADDING, last + DAY_PADDING) for p, (first, last) in ranges.items()}
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {_CHANGES} AS SELECT unnest(?::VARCHAR[]) AS patient_id, "
        "unnest(?::DATE[]) AS first_day, unnest(?::DATE[]) AS last_day, "
        "unnest(?::TIMESTAMPTZ[]) AS first_at, unnest(?::TIMESTAMPTZ[]) AS end_at",
        [
            list(padded),
            [first for first, _ in padded.values()],
            [last for _, last in padded.values()],
            [_midnight(first) for first, _ in padded.values()],
            [_midnight(last + timedelta(days=1)) for _, last in padded.values()],
        ],
    )
    first_day = min((first for first, _ in padded.values()), default=None)
    last_day = max((last for _, last in padded.values()), default=None)
    try:
        for table, columns in tables.items():
            schema, name = table.split(".", 1)
            target, source = f"{catalog}.{schema}.{quote(name)}", f"{schema}.{quote(name)}"
            listed = ", ".join(quote(c) for c in columns)
            selected = ", ".join(f"t.{quote(c)}" for c in columns)
            if "patient_id" in columns and ("day" in columns or "timestamp" in columns):
                if first_day is None or last_day is None:
                    continue
                if "day" in columns:
                    matches = "t.day BETWEEN c.first_day AND c.last_day"
                    # The same bounds once more, as constants: DuckDB skips the row groups outside them
                    # (their min/max), which a join condition alone does not let it do.
                    bounds, params = "t.day BETWEEN ? AND ?", [first_day, last_day]
                else:
                    matches = 't."timestamp" >= c.first_at AND t."timestamp" < c.end_at'
                    bounds = 't."timestamp" >= ? AND t."timestamp" < ?'
                    params = [_midnight(first_day), _midnight(last_day + timedelta(days=1))]
                conn.execute(
                    f"DELETE FROM {target} AS t USING {_CHANGES} AS c "  # noqa: S608 (names from the catalog)
                    f"WHERE t.patient_id = c.patient_id AND {matches} AND {bounds}",
                    params,
                )
                conn.execute(
                    f"INSERT INTO {target} ({listed}) SELECT {selected} FROM {source} AS t "  # noqa: S608
                    f"JOIN {_CHANGES} AS c ON t.patient_id = c.patient_id AND {matches} WHERE {bounds}",
                    params,
                )
            else:
                conn.execute(f"DELETE FROM {target}")  # noqa: S608
                conn.execute(f"INSERT INTO {target} ({listed}) SELECT {listed} FROM {source}")  # noqa: S608
        horizon = retention_horizon(conn)
        if horizon is not None and RAW_HEARTRATE in tables:
            schema, name = RAW_HEARTRATE.split(".", 1)
            conn.execute(f'DELETE FROM {catalog}.{schema}.{name} WHERE "timestamp" < ?', [horizon])  # noqa: S608
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {_CHANGES}")
    return {
        table: conn.execute(f"SELECT count(*) FROM {catalog}.{table}").fetchone()[0]  # noqa: S608
        for table in tables
    }


def row_counts(conn: duckdb.DuckDBPyConnection, tables: dict[str, list[str]]) -> dict[str, int]:
    """The warehouse's rows per published table (what a refreshed copy must hold)."""
    return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in tables}  # noqa: S608
