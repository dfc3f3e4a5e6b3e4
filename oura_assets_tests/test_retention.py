"""Raw heart-rate retention (issue 9): the housekeeping job drops old samples; daily stats keep theirs."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from oura_assets import warehouse as wh
from oura_assets.config import RETENTION_VARIABLE, ConfigError, Settings, load_settings
from oura_assets.definitions import defs as load_defs
from oura_assets.defs.assets import DAILY_STATS_KEY
from oura_assets.normalize import HeartRateDayStats
from oura_assets.retention import heartrate_cutoff, keep_pruned_heart_rate
from oura_assets_tests.support import UNPACED, failures, query, run_sync, table_rows

START, END = date(2024, 6, 10), date(2024, 6, 16)
HORIZON_DAY = date(2024, 6, 13)
DAILY_STATS = "patient_graph.patient_wearable_daily_stats"


def stats(samples: int, offset_h: int = 0) -> HeartRateDayStats:
    return HeartRateDayStats(50, 90, 70.0, samples, timedelta(hours=offset_h))


def stored(samples: int, offset_min: int = 0) -> dict:
    return {
        "hr_min": 40,
        "hr_max": 100,
        "hr_avg": 66.5,
        "hr_samples": samples,
        "utc_offset_minutes": offset_min,
    }


HORIZON = datetime(2024, 6, 13, tzinfo=UTC)


@pytest.mark.parametrize(
    ("case", "computed", "kept", "offsets", "expected_samples"),
    [
        ("no stored figures: computed stands", {date(2024, 6, 1): stats(3)}, {}, {}, {date(2024, 6, 1): 3}),
        (
            "before the horizon: stored wins",
            {date(2024, 6, 1): stats(3)},
            {date(2024, 6, 1): stored(500)},
            {},
            {date(2024, 6, 1): 500},
        ),
        (
            "samples all gone: stored comes back",
            {},
            {date(2024, 6, 12): stored(400)},
            {},
            {date(2024, 6, 12): 400},
        ),
        (
            "after the horizon: computed stands",
            {date(2024, 6, 13): stats(9)},
            {date(2024, 6, 13): stored(500)},
            {},
            {date(2024, 6, 13): 9},
        ),
        # UTC+2: local 13 June begins at 12 June 22:00 UTC, before the horizon: cut in half, so stored wins.
        (
            "a local day straddling the horizon keeps its stored figures",
            {date(2024, 6, 13): stats(9, 2)},
            {date(2024, 6, 13): stored(500, 120)},
            {date(2024, 6, 13): timedelta(hours=2)},
            {date(2024, 6, 13): 500},
        ),
    ],
)
def test_keep_pruned_heart_rate(case, computed, kept, offsets, expected_samples) -> None:
    days = [date(2024, 6, 1), date(2024, 6, 12), date(2024, 6, 13)]
    out = keep_pruned_heart_rate(computed, kept, offsets, days, HORIZON)
    assert {day: s.hr_samples for day, s in out.items()} == expected_samples, case
    assert keep_pruned_heart_rate(computed, kept, offsets, days, None) == computed


def test_cutoff_is_midnight_utc_retention_days_ago() -> None:
    now = datetime(2024, 6, 20, 15, 30, tzinfo=UTC)
    assert heartrate_cutoff(now, 7) == datetime(2024, 6, 13, tzinfo=UTC)


def test_retention_variable_is_optional_and_checked() -> None:
    assert load_settings({}).raw_heartrate_retention_days is None
    assert load_settings({RETENTION_VARIABLE: "90"}).raw_heartrate_retention_days == 90
    with pytest.raises(ConfigError, match=RETENTION_VARIABLE):
        load_settings({RETENTION_VARIABLE: "0"})


def test_definitions_with_the_housekeeping_job_and_schedule_load_as_a_code_server_loads_them(
    pipeline_env: Settings,
) -> None:
    definitions = load_defs()
    # What `dagster dev` does: every job of the repository, op and job names checked for clashes.
    dg.Definitions.validate_loadable(definitions)
    schedule = definitions.resolve_schedule_def("health_data_housekeeping_daily")
    assert schedule.job_name == "health_data_housekeeping" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def housekeeping() -> dg.ExecuteInProcessResult:
    job = load_defs().resolve_job_def("health_data_housekeeping")
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert result.success, failures(result)
    return result


def step_metadata(result: dg.ExecuteInProcessResult) -> dict:
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in output.event_specific_data.metadata.items()}


def test_housekeeping_without_retention_reports_retention_off_and_deletes_nothing(
    pipeline_env: Settings, connect_patient
) -> None:
    connect_patient("patient-r")
    assert run_sync(START, END, run_config=UNPACED).success
    before = query(pipeline_env, "SELECT count(*) FROM oura_raw.heartrate")[0][0]

    metadata = step_metadata(housekeeping())

    assert metadata["retention"].startswith("off")
    assert query(pipeline_env, "SELECT count(*) FROM oura_raw.heartrate")[0][0] == before > 0


@pytest.mark.slow
def test_retention_drops_old_samples_and_the_rebuild_keeps_their_daily_figures(
    pipeline_env: Settings, connect_patient, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect_patient("patient-r")
    assert run_sync(START, END, run_config=UNPACED).success
    stats_before = table_rows(pipeline_env, DAILY_STATS)
    assert query(
        pipeline_env, "SELECT count(*) FROM patient_graph.patient_wearable_daily_stats WHERE hr_samples > 0"
    )[0][0]
    days = (datetime.now(UTC).date() - HORIZON_DAY).days
    monkeypatch.setenv(RETENTION_VARIABLE, str(days))

    result = housekeeping()

    metadata = step_metadata(result)
    cutoff = datetime(2024, 6, 13, tzinfo=UTC)
    assert metadata["cutoff"] == cutoff.isoformat() and metadata["rows_deleted"] > 0
    (oldest,) = query(pipeline_env, "SELECT min(timestamp) FROM oura_raw.heartrate")[0]
    assert oldest >= cutoff
    (entry,) = [e for e in _audit(pipeline_env) if e.action == "retention"]
    assert entry.actor == wh.OPERATOR and entry.detail["rowsDeleted"] == metadata["rows_deleted"]

    # Re-materializing the daily stats alone (no re-fetch): the days whose samples are gone keep theirs.
    rebuilt = run_sync(START, END, asset_selection=[DAILY_STATS_KEY])
    assert rebuilt.success, failures(rebuilt)
    assert table_rows(pipeline_env, DAILY_STATS) == stats_before

    # Without the horizon the same rebuild would have lost them: the guard above is what keeps them.
    with wh.Warehouse(pipeline_env.warehouse_path).transaction("test: forget the horizon") as conn:
        conn.execute("DELETE FROM patient_graph.retention_horizons")
    assert run_sync(START, END, asset_selection=[DAILY_STATS_KEY]).success
    assert table_rows(pipeline_env, DAILY_STATS) != stats_before


def _audit(settings: Settings) -> list[wh.AuditEntry]:
    with wh.Warehouse(settings.warehouse_path).connect("test: audit") as conn:
        return wh.read_audit_log(conn)
