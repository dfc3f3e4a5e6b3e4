"""The tables of the collections added after the core ones (schema migration 6): `wearable_workouts`,
`wearable_sessions`, `wearable_collection_status`, and the daily-stats columns of the wellness summaries
(SpO2, stress, resilience, cardiovascular age).

Described like every table (`table_spec`); `schema.TABLES` registers them with the rest, and migration 6
(`migrations.py`) creates them in a file made before they existed.
"""

from __future__ import annotations

from oura_assets.warehouse.table_spec import (
    DAY_COLUMN,
    PATIENT_ID_COLUMN,
    SOURCE_COLUMN,
    Column,
    Table,
    required,
)

WELLNESS_COLUMNS = (
    Column(
        "spo2_average_pct",
        "DOUBLE",
        "Average blood oxygen saturation (SpO2) during the night that ended this day (`daily_spo2`); null "
        "when Oura could not measure it, or the patient did not grant the `spo2Daily` scope.",
        "%",
    ),
    Column(
        "breathing_disturbance_index",
        "INTEGER",
        "Oura's breathing disturbance index for the night (`daily_spo2`): how often SpO2 dropped, 0-100.",
        "index 0-100",
    ),
    Column(
        "stress_high_seconds",
        "INTEGER",
        "Time spent in Oura's high-stress zone during the day (`daily_stress.stress_high`).",
        "seconds",
    ),
    Column(
        "recovery_high_seconds",
        "INTEGER",
        "Time spent in Oura's high-recovery zone during the day (`daily_stress.recovery_high`).",
        "seconds",
    ),
    Column(
        "stress_day_summary",
        "VARCHAR",
        "Oura's word for the day's stress (`daily_stress.day_summary`): `restored`, `normal` or `stressful`.",
    ),
    Column(
        "resilience_level",
        "VARCHAR",
        "Oura's long-term resilience level (`daily_resilience.level`): `limited`, `adequate`, `solid`, "
        "`strong` or `exceptional`.",
    ),
    Column(
        "vascular_age_years",
        "INTEGER",
        "Oura's predicted vascular (cardiovascular) age (`daily_cardiovascular_age.vascular_age`), 18-100.",
        "years",
    ),
)
"""Daily-stats columns from the newer daily summaries, added by migration 6 (so they come last on disk)."""

_SPAN_COLUMNS = (
    PATIENT_ID_COLUMN,
    SOURCE_COLUMN,
    required("id", "VARCHAR", "Oura's document id (`oura_raw.<collection>.id`)."),
    DAY_COLUMN,
    required("start_at", "TIMESTAMPTZ", "When it started (UTC; Oura's local `start_datetime`)."),
    required("end_at", "TIMESTAMPTZ", "When it ended (UTC; Oura's local `end_datetime`)."),
    Column("duration_seconds", "INTEGER", "end_at - start_at.", "seconds"),
    Column(
        "utc_offset_minutes", "INTEGER", "The patient's UTC offset Oura gave on `start_datetime`.", "minutes"
    ),
)

WEARABLE_WORKOUTS = Table(
    "patient_graph.wearable_workouts",
    "One row per Oura workout document: what, when (UTC) and how hard, with the energy and distance Oura "
    "gave. A day can hold several workouts (a run and an autodetected walk).",
    (
        *_SPAN_COLUMNS,
        required("activity", "VARCHAR", "Oura's activity: `walking`, `running`, `cycling`, …"),
        Column("intensity", "VARCHAR", "`easy`, `moderate` or `hard`."),
        Column("calories_kcal", "DOUBLE", "Energy burned during the workout.", "kcal"),
        Column("distance_m", "DOUBLE", "Distance covered; null for activities without one.", "m"),
        Column(
            "workout_source",
            "VARCHAR",
            "How Oura learned of it: `manual`, `autodetected`, `confirmed` or `workout_heart_rate`.",
        ),
        Column("label", "VARCHAR", "The patient's own label for the workout."),
        required("synced_at", "TIMESTAMPTZ", "When the row was last written (UTC)."),
    ),
    ("patient_id", "source", "id"),
)

WEARABLE_SESSIONS = Table(
    "patient_graph.wearable_sessions",
    "One row per Oura session (a Moment the patient started in the app: breathing, meditation, a nap, …): "
    "when (UTC), what, and the heart rate and HRV Oura recorded during it.",
    (
        *_SPAN_COLUMNS,
        required(
            "session_type",
            "VARCHAR",
            "Oura's type: `breathing`, `meditation`, `nap`, `relaxation`, `rest` or `body_status`.",
        ),
        Column("mood", "VARCHAR", "The mood the patient chose: `bad`, `worse`, `same`, `good` or `great`."),
        Column("hr_avg_bpm", "DOUBLE", "Mean of the session's non-null heart-rate samples.", "bpm"),
        Column("hr_min_bpm", "DOUBLE", "Lowest heart-rate sample of the session.", "bpm"),
        Column("hr_max_bpm", "DOUBLE", "Highest heart-rate sample of the session.", "bpm"),
        Column("hrv_avg_ms", "DOUBLE", "Mean of the session's non-null HRV samples.", "ms"),
        Column("samples", "INTEGER", "Non-null heart-rate samples the figures come from.", "samples"),
        required("synced_at", "TIMESTAMPTZ", "When the row was last written (UTC)."),
    ),
    ("patient_id", "source", "id"),
)

WEARABLE_COLLECTION_STATUS = Table(
    "patient_graph.wearable_collection_status",
    "One row per patient, source and Oura collection the patient's latest sync asked for: whether it "
    "synced and, when not, why: a scope the patient did not grant, an expired membership, Oura refusing it, "
    "or a failed fetch. What `wearable_day_status` is to days, this is to collections.",
    (
        PATIENT_ID_COLUMN,
        SOURCE_COLUMN,
        required("collection", "VARCHAR", "The Oura collection (`workout`, `daily_spo2`, …)."),
        required(
            "status",
            "VARCHAR",
            "`synced`, `scope_missing` (skipped: the patient did not grant its scope), "
            "`subscription_expired`, `forbidden` (403 although the scope was granted) or `error`.",
        ),
        required("reason", "VARCHAR", "Why, in words a person can act on."),
        Column("start_day", "DATE", "First day of the sync that decided it (inclusive)."),
        Column("end_day", "DATE", "Last day of that sync (inclusive)."),
        required("updated_at", "TIMESTAMPTZ", "When the row was last written (UTC)."),
    ),
    ("patient_id", "source", "collection"),
)
