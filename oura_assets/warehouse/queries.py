"""Named read-only queries behind the Dagster asset checks, so `defs/` holds no SQL.

Each answers one question a check asks of the warehouse and returns plain values; the check decides
whether the answer passes and what metadata to show.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

import duckdb

from oura_assets import domain
from oura_assets.warehouse.runs import sync_results_for_run


class MetricKeyShape(NamedTuple):
    """How many `wearable_data` rows of `metric_type` carry exactly these metrics keys (sorted)."""

    metric_type: str
    keys: list[str]
    rows: int


class ConnectionAttention(NamedTuple):
    patient_id: str
    status: str
    last_error: str | None


def wearable_data_key_shapes(conn: duckdb.DuckDBPyConnection) -> list[MetricKeyShape]:
    """Every distinct (metric_type, key set of `metrics`) in `wearable_data`, with its row count."""
    rows = conn.execute(
        "SELECT metric_type, list_sort(json_keys(metrics)) AS keys, count(*) "
        "FROM patient_graph.wearable_data GROUP BY ALL"
    ).fetchall()
    return [MetricKeyShape(metric_type, list(keys), int(count)) for metric_type, keys, count in rows]


def connections_needing_attention(conn: duckdb.DuckDBPyConnection) -> list[ConnectionAttention]:
    """Connections the patient must act on (`domain.needs_attention`), by patient id."""
    rows = conn.execute(
        "SELECT patient_id, status, last_error FROM patient_graph.wearable_connections "
        "ORDER BY patient_id, source"
    ).fetchall()
    return [ConnectionAttention(*row) for row in rows if domain.needs_attention(row[1], row[2])]


def daily_stats_mismatched_days(conn: duckdb.DuckDBPyConnection) -> int:
    """Patient-days of `wearable_data` whose daily-stats row is missing or has other scores."""
    (mismatched,) = conn.execute(
        """
        WITH w AS (
            SELECT patient_id, source, day,
                   max(metrics->>'score') FILTER (metric_type = 'readiness')::INTEGER AS readiness,
                   max(metrics->>'score') FILTER (metric_type = 'sleep')::INTEGER AS sleep,
                   max(metrics->>'score') FILTER (metric_type = 'activity')::INTEGER AS activity
            FROM patient_graph.wearable_data GROUP BY ALL
        )
        SELECT count(*) FROM w
        LEFT JOIN patient_graph.patient_wearable_daily_stats s USING (patient_id, source, day)
        WHERE s.day IS NULL
           OR s.readiness_score IS DISTINCT FROM w.readiness
           OR s.sleep_score IS DISTINCT FROM w.sleep
           OR s.activity_score IS DISTINCT FROM w.activity
        """
    ).fetchone()
    return int(mismatched)


class SyncErrorFound(NamedTuple):
    """One error of a patient's sync result: its code, the collection it hit (None: all of them), why."""

    patient_id: str
    status: str
    code: str
    collection: str | None
    message: str


class RunSyncErrors(NamedTuple):
    """The errors with the asked-for codes in one run's sync results, and how many patients the run had.

    `run_id` is the run the answer is about: the one asked for, or the newest run with sync results when the
    asked-for run has none (a check run on its own, after the run that synced). None when there is no run.
    """

    run_id: str | None
    patients: int
    errors: list[SyncErrorFound]


def sync_errors_in_run(conn: duckdb.DuckDBPyConnection, run_id: str, codes: Collection[str]) -> RunSyncErrors:
    """Every error with one of `codes` in the run's sync results (or the newest run's, when it has none)."""
    results = sync_results_for_run(conn, run_id)
    if not results:
        newest = conn.execute(
            "SELECT run_id FROM patient_graph.sync_results ORDER BY recorded_at DESC, run_id LIMIT 1"
        ).fetchone()
        if newest is None:
            return RunSyncErrors(None, 0, [])
        run_id = newest[0]
        results = sync_results_for_run(conn, run_id)
    found = [
        SyncErrorFound(
            r.patient_id, r.status, str(e.get("code")), e.get("collection"), str(e.get("message", ""))
        )
        for r in results
        for e in r.errors
        if e.get("code") in codes
    ]
    return RunSyncErrors(run_id, len(results), found)
