"""Named read-only queries behind the Dagster asset checks, so `defs/` holds no SQL.

Each answers one question a check asks of the warehouse and returns plain values; the check decides
whether the answer passes and what metadata to show.
"""

from __future__ import annotations

from typing import NamedTuple

import duckdb

from oura_assets import domain


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
