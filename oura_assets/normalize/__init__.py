"""Oura documents in, patient-graph rows out: the pure core behind `wearable_data` and the daily stats.

Everything here is a plain function on plain data (dicts as Oura sends them, a polars frame for heart rate),
so the mapping from Oura's fields to CONTRACT §5's camelCase keys and columns can be tested exhaustively
without HTTP, DuckDB or Dagster. `patient_wearable_daily_stats` is derived from the `wearable_data` rows
built here rather than from the documents again, so the two tables cannot disagree.

Bad payloads: the normalizers are strict. A document that is not an object, lacks a parseable `id` or `day`,
or carries a string (or bool, or a fractional value for an integer field) where Oura documents a number
raises `NormalizationError` naming the collection, the document id and the field. Upstream code screens
documents with `validate_document` (same checks, returned as a reason) and reports the ones it rejects, so
one malformed document never blocks a patient's other days. Unknown extra fields and missing optional
fields are fine: Oura adds fields between exports and omits some (OURA-NOTES.md, "Unknown extra fields").

The parts live in modules named for what they are about (`documents`, `sleep`, `heart_rate`, `rows`,
`activities` (workouts and sessions), `wellness` (SpO2, stress, resilience, vascular age), `timestamps`,
`validation`, `errors`); callers import from `oura_assets.normalize`, which re-exports them.
"""

from oura_assets.normalize.activities import SessionRow, WorkoutRow, session_rows, workout_rows
from oura_assets.normalize.documents import (
    ACTIVITY_CONTRIBUTORS,
    ACTIVITY_FIELDS,
    METRIC_KEYS,
    READINESS_CONTRIBUTORS,
    SLEEP_PERIOD_FIELDS,
    activity_metrics,
    readiness_metrics,
)
from oura_assets.normalize.errors import NormalizationError
from oura_assets.normalize.heart_rate import HeartRateDayStats, day_offsets, heart_rate_day_stats, offset_for
from oura_assets.normalize.rows import DailyStatsRow, WearableRow, daily_stats_rows, wearable_rows
from oura_assets.normalize.sleep import IGNORED_SLEEP_TYPES, hrv_metrics, main_sleep_period, sleep_metrics
from oura_assets.normalize.timestamps import to_utc_z
from oura_assets.normalize.validation import validate_document
from oura_assets.normalize.wellness import DailyWellness, daily_wellness

__all__ = [
    "ACTIVITY_CONTRIBUTORS",
    "ACTIVITY_FIELDS",
    "IGNORED_SLEEP_TYPES",
    "METRIC_KEYS",
    "READINESS_CONTRIBUTORS",
    "SLEEP_PERIOD_FIELDS",
    "DailyStatsRow",
    "DailyWellness",
    "HeartRateDayStats",
    "NormalizationError",
    "SessionRow",
    "WearableRow",
    "WorkoutRow",
    "activity_metrics",
    "daily_stats_rows",
    "daily_wellness",
    "day_offsets",
    "heart_rate_day_stats",
    "hrv_metrics",
    "main_sleep_period",
    "offset_for",
    "readiness_metrics",
    "session_rows",
    "sleep_metrics",
    "to_utc_z",
    "validate_document",
    "wearable_rows",
    "workout_rows",
]
