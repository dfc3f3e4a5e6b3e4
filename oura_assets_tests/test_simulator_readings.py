"""Oura's ambiguities, each reading a simulator knob: the pipeline lands the same tables under every one.

The same range runs through the Dagster job against the simulator under the default readings and under each
other reading (date ends, the last page's `next_token`, date-time forms), and the warehouse's tables are
compared. Raw documents keep Oura's text verbatim, so their date-times are compared as instants. The
patients are picked so the range holds the data realism the readings must survive: days with activity but
no sleep, nights with sleep but no activity, naps, workouts with heart-rate bursts.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pydantic
import pytest

from oura_assets import warehouse as wh
from oura_assets.config import Settings
from oura_assets.simulator import ClientRegistration, SimulatorConfig, SimulatorServer
from oura_assets.simulator import data as simdata
from oura_assets_tests import test_simulator_schema as schema_checks
from oura_assets_tests.conftest import pipeline_environment, simulator_config, use_pipeline_environment
from oura_assets_tests.support import (
    UNPACED,
    VOLATILE,
    connect_patient,
    copy_warehouse,
    failures,
    query,
    run_sync,
    snapshot,
)

_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_NOW = datetime(2025, 1, 1, tzinfo=UTC)
START, END = date(2024, 6, 10), date(2024, 6, 16)


def _range_days() -> list[date]:
    return [START + timedelta(days=n) for n in range((END - START).days + 1)]


def _has(name: str, flag: str) -> bool:
    return any(getattr(simdata.plan(name, day), flag) for day in _range_days())


def _has_nap(name: str) -> bool:
    return any(
        p.kind in ("sleep", "late_nap") and p != simdata.plan(name, day).main_period
        for day in _range_days()
        for p in simdata.plan(name, day).periods
    )


def ring_users() -> list[str]:
    """Ring users whose range holds a night off, a day off, a nap and a workout between them."""
    candidates = [f"readings-{n}-ring" for n in range(400)]
    picked = [
        next(n for n in candidates if _has(n, "night_off")),
        next(n for n in candidates if _has(n, "day_off")),
        next(n for n in candidates if _has_nap(n) and _has(n, "workouts")),
    ]
    return list(dict.fromkeys(picked))


def _canonical(value: Any) -> Any:
    if isinstance(value, str):
        if value.startswith("{"):
            try:
                return json.dumps(_canonical(json.loads(value)), sort_keys=True)
            except ValueError:
                return value
        if _DATETIME.match(value):
            return datetime.fromisoformat(value).isoformat()
        return value
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


def canonical(tables: dict[str, list[tuple]]) -> dict[str, list]:
    """Tables with every date-time text (in raw documents too) as the instant it names."""
    return {name: sorted(_canonical(list(row)) for row in rows) for name, rows in tables.items()}


def landed(settings) -> dict[str, list[tuple]]:
    """Empty the data tables, run the range once, and snapshot what landed."""
    with wh.Warehouse(settings.warehouse_path).transaction("test: start from empty tables") as conn:
        for table in (
            "wearable_data",
            "patient_wearable_daily_stats",
            "wearable_workouts",
            "wearable_sessions",
        ):
            conn.execute(f"DELETE FROM patient_graph.{table}")  # noqa: S608 (fixed names)
        # Every collection's raw table: a document landed again under another reading would otherwise count
        # as a revision (its text changed) and differ from the baseline only in that count.
        for table in wh.TABLES:
            if table.startswith("oura_raw.") and table != "oura_raw.document_revisions":
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 (names from the schema)
    result = run_sync(START, END, run_config=UNPACED)  # the readings are the subject, not pacing
    assert result.success, failures(result)
    # Emptied tables are refilled by each run, so when a raw document was first seen or changed is news.
    return snapshot(settings, drop=VOLATILE | {"first_seen_at", "last_changed_at"})


# `space` and `compact_offset` alone are covered by test_timestamp_forms.py's parser tests; one run with both
# keeps this test's Dagster runs few.
READINGS = [
    {"date_ends": "inclusive"},
    {"date_ends": "superset"},
    {"last_next_token": "null"},
    {"timestamps": "space_compact_offset"},
]


@dataclass(frozen=True)
class Baseline:
    settings: Settings
    simulator: SimulatorServer
    users: list[str]
    tables: dict[str, list[tuple]]
    """What the range lands under the default readings."""
    copy: Path
    """A copy of the warehouse as that run left it, for tests that only read it."""


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baseline]:
    """The ring users connected and the range landed once under the default readings, on a simulator and
    warehouse of this module's (both the readings test and the realism test start from this run)."""
    root = tmp_path_factory.mktemp("readings")
    with SimulatorServer(simulator_config()) as simulator, pytest.MonkeyPatch.context() as env:
        settings = use_pipeline_environment(pipeline_environment(simulator, root / "warehouse.duckdb"), env)
        users = ring_users()
        for n, user in enumerate(users):
            connect_patient(settings, f"patient-{n}", user)
        tables = landed(settings)
        copy = copy_warehouse(settings.warehouse_path, root / "baseline")
        yield Baseline(settings, simulator, users, tables, copy)


@pytest.mark.slow
def test_every_reading_lands_the_same_tables(baseline: Baseline):
    settings, simulator, baseline = baseline.settings, baseline.simulator, baseline.tables
    assert simulator.control.faults()["readings"] == {
        "date_ends": "exclusive",
        "last_next_token": "absent",
        "timestamps": "iso",
    }
    assert all(baseline[f"oura_raw.{c}"] for c in ("daily_readiness", "sleep", "daily_activity", "heartrate"))
    expected = canonical(baseline)
    try:
        for reading in READINGS:
            simulator.control.reset()
            simulator.control.set_readings(**reading)
            tables = landed(settings)
            assert canonical(tables) == expected, reading
            if "timestamps" in reading:
                # The reading took effect: the raw text differs even though the instants do not.
                assert tables["oura_raw.sleep"] != baseline["oura_raw.sleep"], reading
            else:
                assert tables == baseline, reading
    finally:
        simulator.control.reset()


# Slow by its module fixture: the mark keeps it next to the readings test (the slow tests run first), so the
# baseline is landed once for both.
@pytest.mark.slow
def test_realism_lands_activity_without_sleep_sleep_without_activity_and_dense_heart_rate(
    baseline: Baseline,
):
    users, warehouse = baseline.users, baseline.copy
    night_off = next(
        (f"patient-{n}", day)
        for n, user in enumerate(users)
        for day in _range_days()
        if simdata.plan(user, day).night_off
    )
    day_off = next(
        (f"patient-{n}", day)
        for n, user in enumerate(users)
        for day in _range_days()
        if simdata.plan(user, day).day_off
    )

    def metric_types(patient: str, day: date) -> set[str]:
        rows = query(
            warehouse,
            "SELECT metric_type FROM patient_graph.wearable_data WHERE patient_id = ? AND day = ?",
            [patient, day],
        )
        return {t for (t,) in rows}

    assert metric_types(*night_off) == {"activity"}
    assert "activity" not in metric_types(*day_off) and "sleep" in metric_types(*day_off)
    seconds, workout_gaps = query(
        warehouse,
        "SELECT count(*) FILTER (WHERE second(timestamp) <> 0), "
        "median(gap) FILTER (WHERE source = 'workout') FROM ("
        "SELECT timestamp, source, epoch(timestamp) - epoch(lag(timestamp) OVER "
        "(PARTITION BY patient_id, source ORDER BY timestamp)) AS gap FROM oura_raw.heartrate)",
    )[0]
    assert seconds > 0
    assert workout_gaps is not None and workout_gaps <= 15


@pytest.mark.parametrize("name", [f"realism-{n}" for n in range(30)])
def test_naps_last_15_minutes_or_more_and_sleep_most_of_it(name):
    for n in range(90):
        day = date(2024, 3, 1) + timedelta(days=n)
        plan = simdata.plan(name, day)
        for period in plan.periods:
            if period.kind in ("sleep", "late_nap") and period != plan.main_period:
                doc = next(
                    d
                    for d in simdata.documents_for_day(name, "sleep", day, _NOW)
                    if d["period"] == period.index
                )
                assert doc["time_in_bed"] >= 15 * 60
                assert 40 <= doc["efficiency"] <= 100, doc["sleep_phase_5_min"]


def test_partial_days_and_heart_rate_bursts_are_generated():
    names = [f"realism-{n}" for n in range(40)]
    days = [date(2024, 3, 1) + timedelta(days=n) for n in range(60)]
    plans = [(name, day, simdata.plan(name, day)) for name in names for day in days]
    night_off = [(name, day) for name, day, plan in plans if plan.night_off]
    day_off = [(name, day) for name, day, plan in plans if plan.day_off]
    assert 0.01 < len(night_off) / len(plans) < 0.08 and 0.01 < len(day_off) / len(plans) < 0.08
    for name, day in night_off[:10]:
        assert simdata.documents_for_day(name, "daily_activity", day, _NOW)
        for collection in ("sleep", "daily_sleep", "daily_readiness"):
            assert simdata.documents_for_day(name, collection, day, _NOW) == []
    for name, day in day_off[:10]:
        assert simdata.documents_for_day(name, "sleep", day, _NOW)
        assert simdata.documents_for_day(name, "daily_readiness", day, _NOW)
        assert simdata.documents_for_day(name, "daily_activity", day, _NOW) == []
    name, day, plan = next((n, d, p) for n, d, p in plans if p.workouts)
    hr = simdata.heart_rate_day(name, day)
    workout = plan.workouts[0]
    inside = [
        (epoch, source)
        for epoch, source in zip(hr.epochs, hr.sources, strict=True)
        if workout.start.timestamp() <= epoch < workout.end.timestamp()
    ]
    assert {source for _, source in inside} == {"workout"}
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(inside)]
    assert gaps and max(gaps) <= 15
    assert len(inside) >= (workout.end - workout.start).total_seconds() / 15
    awake = [e for e, s in zip(hr.epochs, hr.sources, strict=True) if s == "awake"]
    assert sum(e % 300 != 0 for e in awake) > 0.9 * len(awake)
    assert sum(e % 60 != 0 for e in awake) > 0.9 * len(awake)


def _pydantic_datetime(value: object) -> bool:
    """`date-time` as Oura's framework reads it (pydantic 2), with an offset, as the readings may write it."""
    if not isinstance(value, str) or not _DATETIME.match(value):
        return False
    parsed = pydantic.TypeAdapter(datetime).validate_python(value)
    return parsed.tzinfo is not None


@pytest.mark.parametrize("reading", [*READINGS, {"timestamps": "space"}, {"timestamps": "compact_offset"}])
def test_every_reading_answers_in_the_spec_shape(reading):
    """The strict schema check of test_simulator_schema.py under each reading; the date-time forms are
    checked as pydantic reads them (RFC 3339 itself takes a `T` and `±HH:MM`)."""
    formats = jsonschema.FormatChecker(formats=())
    formats.checks("date", raises=ValueError)(schema_checks._is_date)
    if "timestamps" in reading:
        formats.checks("date-time", raises=ValueError)(_pydantic_datetime)
    else:
        formats.checks("date-time", raises=ValueError)(schema_checks._is_datetime)
    components = schema_checks.strict_components(schema_checks.load_schemas())

    def validate(instance: Any, name: str) -> None:
        root = {"components": {"schemas": components}, "$ref": f"#/components/schemas/{name}"}
        errors = list(jsonschema.Draft202012Validator(root, format_checker=formats).iter_errors(instance))
        assert not errors, [f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:3]]

    config = SimulatorConfig(
        clients={"c": ClientRegistration("s", ("http://127.0.0.1:9/cb",))}, readings=reading
    )
    with SimulatorServer(config) as server, httpx.Client(timeout=10) as http:
        server.control.set_clock(schema_checks.CLOCK, frozen=True)
        token = server.control.issue_tokens("schema-user-1")["access_token"]
        base = f"{server.url}/v2/usercollection"
        window = {"start_date": "2024-06-08", "end_date": "2024-06-12"}
        for route, schema in schema_checks.ROUTE_SCHEMAS.items():
            for body in schema_checks.pages(http, f"{base}/{route}", token, window):
                validate(body, f"MultiDocumentResponse_{schema}_")
        hr_window = {
            "start_datetime": "2024-06-10T00:00:00+00:00",
            "end_datetime": "2024-06-11T00:00:00+00:00",
        }
        bodies = list(schema_checks.pages(http, f"{base}/heartrate", token, hr_window))
        for body in bodies:
            validate(body, "TimeSeriesResponse_PublicHeartRateRow_")
        assert len(bodies) > 1
        last_null = reading.get("last_next_token") == "null"
        assert ("next_token" in bodies[-1]) is last_null and bodies[-1].get("next_token") is None


def test_readings_are_set_over_http_and_reset_to_the_configured_ones():
    config = SimulatorConfig(
        clients={"c": ClientRegistration("s", ("http://127.0.0.1:9/cb",))},
        readings={"date_ends": "inclusive"},
    )
    with SimulatorServer(config) as server, httpx.Client(timeout=10) as http:
        url = f"{server.url}/_sim/faults"
        assert http.get(url).json()["readings"]["date_ends"] == "inclusive"
        answer = http.post(url, json={"readings": {"last_next_token": "null", "timestamps": "space"}})
        assert answer.status_code == 200
        assert answer.json()["readings"] == {
            "date_ends": "inclusive",
            "last_next_token": "null",
            "timestamps": "space",
        }
        for bad in ({"date_ends": "sideways"}, {"end_dates": "inclusive"}, "inclusive"):
            refused = http.post(url, json={"readings": bad})
            assert refused.status_code == 400, bad
        assert http.delete(url).json()["readings"] == {
            "date_ends": "inclusive",
            "last_next_token": "absent",
            "timestamps": "iso",
        }
