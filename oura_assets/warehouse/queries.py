"""Named read-only queries behind the Dagster asset checks, so `defs/` holds no SQL.

Each answers one question a check asks of the warehouse and returns plain values; the check decides
whether the answer passes and what metadata to show.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date, datetime
from typing import Any, NamedTuple

import duckdb

from oura_assets import domain
from oura_assets.warehouse.runs import sync_results_for_run
from oura_assets.warehouse.schema import TABLES


class RunWindow(NamedTuple):
    """What a run wrote, for the checks about it: the `day`s [start, end] of its documents and normalized
    rows, and the heart-rate samples' UTC instants [hr_start, hr_end) (its fetch window, which the daily-stats
    rebuild reads back). A check given one looks at those rows only, so its cost follows the run, not the
    history; given None it sweeps the whole table (a check run on its own, outside a ranged run)."""

    start: date
    end: date
    hr_start: datetime
    hr_end: datetime


def _in_window(window: RunWindow | None, column: str = "day", alias: str = "") -> tuple[str, list[Any]]:
    """SQL condition (and its parameters) keeping the rows of `window`; `true` without one."""
    if window is None:
        return "true", []
    qualified = f"{alias}.{column}" if alias else column
    if column == '"timestamp"':
        return f"({qualified} >= ? AND {qualified} < ?)", [window.hr_start, window.hr_end]
    return f"({qualified} BETWEEN ? AND ?)", [window.start, window.end]


class MetricKeyShape(NamedTuple):
    """How many `wearable_data` rows of `metric_type` carry exactly these metrics keys (sorted)."""

    metric_type: str
    keys: list[str]
    rows: int


class ConnectionAttention(NamedTuple):
    patient_id: str
    status: str
    last_error: str | None


def wearable_data_key_shapes(
    conn: duckdb.DuckDBPyConnection, window: RunWindow | None = None
) -> list[MetricKeyShape]:
    """Every distinct (metric_type, key set of `metrics`) in `wearable_data` (of `window`), with its count."""
    where, params = _in_window(window)
    rows = conn.execute(
        "SELECT metric_type, list_sort(json_keys(metrics)) AS keys, count(*) "  # noqa: S608 (constants)
        f"FROM patient_graph.wearable_data WHERE {where} GROUP BY ALL",
        params,
    ).fetchall()
    return [MetricKeyShape(metric_type, list(keys), int(count)) for metric_type, keys, count in rows]


def connections_needing_attention(conn: duckdb.DuckDBPyConnection) -> list[ConnectionAttention]:
    """Connections the patient must act on (`domain.needs_attention`), by patient id."""
    rows = conn.execute(
        "SELECT patient_id, status, last_error FROM patient_graph.wearable_connections "
        "ORDER BY patient_id, source"
    ).fetchall()
    return [ConnectionAttention(*row) for row in rows if domain.needs_attention(row[1], row[2])]


def daily_stats_mismatched_days(conn: duckdb.DuckDBPyConnection, window: RunWindow | None = None) -> int:
    """Patient-days of `wearable_data` (of `window`) whose daily-stats row is missing or has other scores."""
    where, params = _in_window(window)
    (mismatched,) = conn.execute(
        f"""
        WITH w AS (
            SELECT patient_id, source, day,
                   max(metrics->>'score') FILTER (metric_type = 'readiness')::INTEGER AS readiness,
                   max(metrics->>'score') FILTER (metric_type = 'sleep')::INTEGER AS sleep,
                   max(metrics->>'score') FILTER (metric_type = 'activity')::INTEGER AS activity
            FROM patient_graph.wearable_data WHERE {where} GROUP BY ALL
        )
        SELECT count(*) FROM w
        LEFT JOIN patient_graph.patient_wearable_daily_stats s USING (patient_id, source, day)
        WHERE s.day IS NULL
           OR s.readiness_score IS DISTINCT FROM w.readiness
           OR s.sleep_score IS DISTINCT FROM w.sleep
           OR s.activity_score IS DISTINCT FROM w.activity
        """,  # noqa: S608 (constants)
        params,
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


# Data-quality checks (issue 8.5). Each query returns the offending rows as `Offenders`: how many there are
# and the first `MAX_OFFENDERS` of them, each named by patient, day, id and the value at fault.

MAX_OFFENDERS = 50
SCORE_RANGE = (1, 100)
BPM_RANGE = (25, 250)
# Oura's total_sleep_duration is the sum of deep, REM and light sleep, each in whole seconds; 60 s leaves
# room for rounding in a revised document without letting a real inconsistency (minutes off) through.
SLEEP_SUM_TOLERANCE_S = 60
SCORED_COLLECTIONS = ("daily_readiness", "daily_sleep", "daily_activity")


class Offender(NamedTuple):
    """One row a check refuses: whose, which day, which row of the table (`id`), and what is wrong."""

    patient_id: str
    day: date | None
    id: str | None
    value: str

    def to_dict(self) -> dict[str, str | None]:
        return {
            "patient_id": self.patient_id,
            "day": self.day.isoformat() if self.day else None,
            "id": self.id,
            "value": self.value,
        }


class Offenders(NamedTuple):
    count: int
    rows: list[Offender]


def _offenders(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Offenders:
    """Run `sql` (columns patient_id, day, id, value) and keep the count and the first rows, in order."""
    rows = conn.execute(
        f"SELECT *, count(*) OVER () FROM ({sql}) ORDER BY ALL LIMIT {MAX_OFFENDERS}",  # noqa: S608
        params or [],
    ).fetchall()
    return Offenders(rows[0][-1] if rows else 0, [Offender(p, d, i, str(v)) for p, d, i, v, _ in rows])


def primary_key_enforced(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    """True when the database itself holds `table` to its primary key (a DuckDB file made by the migrations);
    false on a DuckLake catalog, which enforces no keys, and on a table copied or rebuilt without one."""
    schema, name = table.split(".", 1)
    (enforced,) = conn.execute(
        "SELECT count(*) FROM duckdb_constraints() WHERE database_name = current_database() "
        "AND schema_name = ? AND table_name = ? AND constraint_type = 'PRIMARY KEY' "
        "AND list_sort(constraint_column_names) = list_sort(?::VARCHAR[])",
        [schema, name, list(TABLES[table].primary_key)],
    ).fetchone()
    return bool(enforced)


def duplicate_keys(conn: duckdb.DuckDBPyConnection, table: str, window: RunWindow | None = None) -> Offenders:
    """Keys of `table` (schema.TABLES' primary key) held by more than one row.

    DuckDB enforces the keys, but a DuckLake catalog does not, nor does a DuckDB file for
    `oura_raw.heartrate` (`schema.py` says why), and a table copied or rebuilt by hand loses them: this is
    what says so. With `window`, only the keys of the rows in it (what a run wrote) are looked
    at, every row holding one of them counted wherever it lies, so a duplicate the run made is always found.
    """
    key = TABLES[table].primary_key
    columns = {c.name for c in TABLES[table].columns}
    day = "any_value(day)" if "day" in columns else 'any_value(CAST("timestamp" AS DATE))'
    rest = [c for c in key if c not in ("patient_id", "day")]
    row_id = "concat_ws(' ', " + ", ".join(f'CAST("{c}" AS VARCHAR)' for c in rest) + ")"
    group = ", ".join(f'"{c}"' for c in key)
    where, params = "true", []
    if window is not None:
        in_window, params = _in_window(window, "day" if "day" in columns else '"timestamp"')
        if "day" in key or "timestamp" in key:
            where = in_window  # the key holds the day (or instant): every row with the key lies in the window
        else:  # the key is (patient, document id): the same document may sit on another day
            where = f"({group}) IN (SELECT ({group}) FROM {table} WHERE {in_window})"  # noqa: S608
    return _offenders(
        conn,
        f"SELECT patient_id, {day}, {row_id}, count(*) || ' rows with this key' FROM {table} "  # noqa: S608
        f"WHERE {where} GROUP BY {group} HAVING count(*) > 1",
        params,
    )


def _out_of_range(value: str, low: int, high: int) -> str:
    """SQL: true when the text `value` is present but not a number in [low, high]."""
    number = f"TRY_CAST({value} AS DOUBLE)"
    return f"({value} IS NOT NULL AND ({number} IS NULL OR {number} < {low} OR {number} > {high}))"


def raw_scores_out_of_range(
    conn: duckdb.DuckDBPyConnection, collection: str, window: RunWindow | None = None
) -> Offenders:
    """`oura_raw.<collection>` documents (of `window`) whose `score` is neither null nor in 1-100."""
    if collection not in SCORED_COLLECTIONS:
        raise ValueError(f"{collection!r} carries no score")
    score = "(document->>'score')"
    where, params = _in_window(window)
    return _offenders(
        conn,
        f"SELECT patient_id, day, id, 'score ' || {score} FROM oura_raw.{collection} "  # noqa: S608
        f"WHERE {where} AND {_out_of_range(score, *SCORE_RANGE)}",
        params,
    )


def wearable_data_scores_out_of_range(
    conn: duckdb.DuckDBPyConnection, window: RunWindow | None = None
) -> Offenders:
    """`wearable_data` readiness, sleep and activity rows whose `score` is neither null nor in 1-100."""
    score = "(metrics->>'score')"
    where, params = _in_window(window)
    return _offenders(
        conn,
        f"""
        SELECT patient_id, day, metric_type, 'score ' || {score} FROM patient_graph.wearable_data
        WHERE {where} AND metric_type IN ('readiness', 'sleep', 'activity')
          AND {_out_of_range(score, *SCORE_RANGE)}
        """,  # noqa: S608 (constants)
        params,
    )


def _daily_stats_of(window: RunWindow | None) -> tuple[str, list[Any]]:
    where, params = _in_window(window)
    return f"(SELECT * FROM patient_graph.patient_wearable_daily_stats WHERE {where})", params  # noqa: S608


def daily_stats_scores_out_of_range(
    conn: duckdb.DuckDBPyConnection, window: RunWindow | None = None
) -> Offenders:
    """Daily-stats rows whose readiness, sleep or activity score is neither null nor in 1-100."""
    low, high = SCORE_RANGE
    stats, params = _daily_stats_of(window)
    return _offenders(
        conn,
        f"""
        SELECT patient_id, day, name, name || ' ' || value
        FROM (UNPIVOT {stats} ON readiness_score, sleep_score, activity_score INTO NAME name VALUE value)
        WHERE value < {low} OR value > {high}
        """,  # noqa: S608 (constants)
        params,
    )


def raw_heartrate_out_of_range(conn: duckdb.DuckDBPyConnection, window: RunWindow | None = None) -> Offenders:
    """Heart-rate samples (of `window`) outside 25-250 bpm (no resting or exercising human is outside it)."""
    low, high = BPM_RANGE
    where, params = _in_window(window, '"timestamp"')
    return _offenders(
        conn,
        f"""
        SELECT patient_id, CAST("timestamp" AS DATE),
               strftime("timestamp", '%Y-%m-%dT%H:%M:%SZ') || ' ' || source, bpm || ' bpm'
        FROM oura_raw.heartrate WHERE {where} AND (bpm < {low} OR bpm > {high})
        """,  # noqa: S608 (constants)
        params,
    )


def daily_stats_heartrate_out_of_range(
    conn: duckdb.DuckDBPyConnection, window: RunWindow | None = None
) -> Offenders:
    """Daily-stats rows whose hr_min or hr_max is outside 25-250 bpm."""
    low, high = BPM_RANGE
    stats, params = _daily_stats_of(window)
    return _offenders(
        conn,
        f"""
        SELECT patient_id, day, name, name || ' ' || value || ' bpm'
        FROM (UNPIVOT {stats} ON hr_min, hr_max INTO NAME name VALUE value)
        WHERE value < {low} OR value > {high}
        """,  # noqa: S608 (constants)
        params,
    )


def _sleep_problem(total: str, deep: str, rem: str, light: str, others: list[str]) -> str:
    """SQL: why a sleep record's durations do not add up (negative, or stages beyond the total), or null."""
    durations = ", ".join([total, deep, rem, light, *others])
    stages = f"coalesce({deep}, 0) + coalesce({rem}, 0) + coalesce({light}, 0)"
    return f"""CASE
        WHEN list_min([{durations}]) < 0 THEN 'a negative duration: ' || list_min([{durations}]) || ' s'
        WHEN {stages} > {total} + {SLEEP_SUM_TOLERANCE_S} THEN 'deep + REM + light = ' || ({stages})
            || ' s > total sleep ' || {total} || ' s + {SLEEP_SUM_TOLERANCE_S} s'
        END"""


def _seconds(json_path: str) -> str:
    return f"TRY_CAST({json_path} AS DOUBLE)"


def raw_sleep_period_problems(conn: duckdb.DuckDBPyConnection, window: RunWindow | None = None) -> Offenders:
    """`oura_raw.sleep` periods with a negative duration, stages that exceed the total, or an end before
    the start (a period still in progress has no end yet and passes)."""
    d = {
        name: _seconds(f"document->>'{name}'")
        for name in (
            "total_sleep_duration",
            "deep_sleep_duration",
            "rem_sleep_duration",
            "light_sleep_duration",
            "awake_time",
            "latency",
            "time_in_bed",
        )
    }
    problem = _sleep_problem(
        d["total_sleep_duration"],
        d["deep_sleep_duration"],
        d["rem_sleep_duration"],
        d["light_sleep_duration"],
        [d["awake_time"], d["latency"], d["time_in_bed"]],
    )
    start, end = (
        "TRY_CAST(document->>'bedtime_start' AS TIMESTAMPTZ)",
        "TRY_CAST(document->>'bedtime_end' AS TIMESTAMPTZ)",
    )
    where, params = _in_window(window)
    return _offenders(
        conn,
        f"""
        SELECT patient_id, day, id, problem FROM (
            SELECT patient_id, day, id, coalesce({problem}, CASE WHEN {end} <= {start} THEN
                'bedtime_end ' || (document->>'bedtime_end') || ' not after bedtime_start '
                || (document->>'bedtime_start') END) AS problem
            FROM oura_raw.sleep WHERE {where}
        ) WHERE problem IS NOT NULL
        """,  # noqa: S608 (constants)
        params,
    )


def wearable_data_sleep_duration_problems(
    conn: duckdb.DuckDBPyConnection, window: RunWindow | None = None
) -> Offenders:
    """`wearable_data` sleep rows with a negative duration or deep + REM + light beyond total sleep."""
    m = {key: _seconds(f"metrics->>'{key}'") for key in ("totalSleep", "deepSleep", "remSleep", "lightSleep")}
    others = [_seconds("metrics->>'awake'"), _seconds("metrics->>'latency'")]
    problem = _sleep_problem(m["totalSleep"], m["deepSleep"], m["remSleep"], m["lightSleep"], others)
    where, params = _in_window(window)
    return _offenders(
        conn,
        f"""
        SELECT patient_id, day, metric_type, problem FROM (
            SELECT patient_id, day, metric_type, {problem} AS problem
            FROM patient_graph.wearable_data WHERE {where} AND metric_type = 'sleep'
        ) WHERE problem IS NOT NULL
        """,  # noqa: S608 (constants)
        params,
    )


def wearable_data_bedtimes_out_of_order(
    conn: duckdb.DuckDBPyConnection, window: RunWindow | None = None
) -> Offenders:
    """`wearable_data` sleep rows whose bedtimeEnd is not after bedtimeStart (or is not a time at all)."""
    start, end = "(metrics->>'bedtimeStart')", "(metrics->>'bedtimeEnd')"
    where, params = _in_window(window)
    return _offenders(
        conn,
        f"""
        SELECT patient_id, day, metric_type, 'bedtimeStart ' || coalesce({start}, 'null')
            || ', bedtimeEnd ' || {end}
        FROM patient_graph.wearable_data
        WHERE {where} AND metric_type = 'sleep' AND {end} IS NOT NULL
          AND (TRY_CAST({end} AS TIMESTAMPTZ) IS NULL
               OR TRY_CAST({end} AS TIMESTAMPTZ) <= TRY_CAST({start} AS TIMESTAMPTZ))
        """,  # noqa: S608 (constants)
        params,
    )


DAY_STATUS_TABLE = "patient_graph.wearable_day_status"


def spans_out_of_order(
    conn: duckdb.DuckDBPyConnection, table: str, window: RunWindow | None = None
) -> Offenders:
    """`wearable_workouts` / `wearable_sessions` rows that end before they start or last over a day, or whose
    `day` is more than a day from their UTC start (a local day read with the wrong offset)."""
    if table not in ("patient_graph.wearable_workouts", "patient_graph.wearable_sessions"):
        raise ValueError(f"{table!r} holds no spans")
    where, params = _in_window(window)
    return _offenders(
        conn,
        f"""
        SELECT patient_id, day, id, strftime(start_at, '%Y-%m-%dT%H:%M:%SZ') || ' .. '
               || strftime(end_at, '%Y-%m-%dT%H:%M:%SZ')
        FROM {table}
        WHERE {where} AND (end_at < start_at OR end_at - start_at > INTERVAL 24 HOURS
           OR abs(datediff('day', day, (start_at AT TIME ZONE 'UTC')::DATE)) > 1)
        """,  # noqa: S608 (table checked above)
        params,
    )


def days_without_data_or_status(conn: duckdb.DuckDBPyConnection, day: date) -> Offenders | None:
    """Active connections with neither a `wearable_data` row nor a day status for `day`.

    None while `wearable_day_status` does not exist (a warehouse from before it): nothing to check then.
    """
    schema, name = DAY_STATUS_TABLE.split(".")
    (exists,) = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, name],
    ).fetchone()
    if not exists:
        return None
    return _offenders(
        conn,
        f"""
        SELECT c.patient_id, CAST(? AS DATE), c.source, 'no wearable_data row and no day status'
        FROM patient_graph.wearable_connections c
        WHERE c.status = 'active'
          AND NOT EXISTS (SELECT 1 FROM patient_graph.wearable_data w
                          WHERE w.patient_id = c.patient_id AND w.source = c.source AND w.day = ?)
          AND NOT EXISTS (SELECT 1 FROM {DAY_STATUS_TABLE} s
                          WHERE s.patient_id = c.patient_id AND s.source = c.source AND s.day = ?)
        """,  # noqa: S608 (a constant table name)
        [day, day, day],
    )
