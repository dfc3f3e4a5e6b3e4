"""The asset checks, evaluated by Dagster: `dg.materialize` over a real partition range against the simulator,
then each check's evaluation read from the run (`get_asset_check_evaluations`).

A check that fails is shown passing data first and then the one change that should make it fail, so the test
shows the check can tell the two apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from oura_assets import warehouse as wh
from oura_assets.config import Settings
from oura_assets.definitions import defs as load_defs
from oura_assets.defs import checks
from oura_assets.defs.assets import WEARABLE_DATA_KEY
from oura_assets.defs.partitions import partition_range_tags
from oura_assets.simulator import SimulatorServer
from oura_assets_tests.conftest import pipeline_environment, simulator_config, use_pipeline_environment
from oura_assets_tests.support import UNPACED, connect_patient, copy_warehouse, failures, query

START, END = date(2024, 6, 10), date(2024, 6, 14)
CHECKS = [
    checks.wearable_data_metric_keys,
    checks.connections_need_attention,
    checks.daily_stats_agree_with_wearable_data,
]
CHECK_NAMES = {
    "wearable_data_metric_keys",
    "connections_need_attention",
    "daily_stats_agree_with_wearable_data",
}


def run_checks(selection: dg.AssetSelection) -> dg.ExecuteInProcessResult:
    definitions = load_defs()
    assets = [a for a in definitions.assets or [] if isinstance(a, dg.AssetsDefinition)]
    return dg.materialize(
        [*assets, *checks.CHECK_STEPS],
        resources=definitions.resources,
        tags=partition_range_tags(START, END),
        run_config=UNPACED,
        selection=selection,
        raise_on_error=False,
    )


def materialize(*, checks_only: bool = False) -> dict[str, dg.AssetCheckEvaluation]:
    """Materialize every asset with these checks over START..END (or run the checks alone, on what is already
    in the warehouse) and return each check's evaluation by name. The checks share their asset's step with
    others (`CHECK_STEPS`); selecting them by key runs only them."""
    selected = dg.AssetSelection.checks(*(checks.spec_of(check).key for check in CHECKS))
    result = run_checks(selected if checks_only else dg.AssetSelection.all().without_checks() | selected)
    assert result.success, failures(result)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == CHECK_NAMES
    return evaluations


def metadata(evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    return {key: value.value for key, value in evaluation.metadata.items()}


@dataclass(frozen=True)
class CleanSync:
    environment: dict[str, str]
    warehouse: Path
    evaluations: dict[str, dg.AssetCheckEvaluation]


@pytest.fixture(scope="module")
def clean_sync(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CleanSync]:
    """Two healthy patients synced over START..END once for the module (its own simulator and warehouse),
    and the checks' evaluations of that run."""
    root = tmp_path_factory.mktemp("checks")
    with SimulatorServer(simulator_config()) as simulator, pytest.MonkeyPatch.context() as env:
        environment = pipeline_environment(simulator, root / "warehouse.duckdb")
        settings = use_pipeline_environment(environment, env)
        for patient in ("patient-a", "patient-b"):
            connect_patient(settings, patient)
        evaluations = materialize()
        assert isinstance(settings.warehouse_path, Path)
        yield CleanSync(environment, settings.warehouse_path, evaluations)


@pytest.fixture
def landed(
    clean_sync: CleanSync, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, dg.AssetCheckEvaluation], Settings]:
    """The clean sync's evaluations, and settings pointing at a copy of its warehouse for this test to change
    (same simulator and token key: the copy's patients stay connected)."""
    copy = {
        **clean_sync.environment,
        "OURA_ASSETS_WAREHOUSE": str(copy_warehouse(clean_sync.warehouse, tmp_path)),
    }
    return clean_sync.evaluations, use_pipeline_environment(copy, monkeypatch)


def test_every_check_passes_on_a_clean_sync(clean_sync):
    landed = clean_sync.evaluations
    assert {name: e.passed for name, e in landed.items()} == dict.fromkeys(CHECK_NAMES, True)
    keys = metadata(landed["wearable_data_metric_keys"])
    assert keys["row_shapes_checked"] >= 4 and keys["unexpected_shapes"] == {}
    assert metadata(landed["connections_need_attention"]) == {"patients": 0, "details": {}}
    assert metadata(landed["daily_stats_agree_with_wearable_data"]) == {
        "mismatched_days": 0,
        "checked": f"the run's days {START}..{END}",  # a ranged run's checks look at its days (issue 10)
    }
    assert landed["wearable_data_metric_keys"].asset_key == dg.AssetKey(["patient_graph", "wearable_data"])


def test_patients_needing_to_reconnect_or_renew_fail_connections_check_with_warn(
    pipeline_env, connect_patient, simulator
):
    connect_patient("patient-ok")
    rejected = connect_patient("patient-rejected")
    expired = connect_patient("patient-expired")
    simulator.control.set_faults(
        users={
            rejected.ring_user: {"expire_access_tokens": True, "refresh_reject": True},
            expired.ring_user: {"forbidden": True},
        }
    )
    evaluation = materialize()["connections_need_attention"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    found = metadata(evaluation)
    assert found["patients"] == 2
    assert set(found["details"]) == {"patient-expired", "patient-rejected"}
    assert found["details"]["patient-rejected"]["status"] == "reconnect_required"
    assert found["details"]["patient-expired"] == {
        "status": "active",
        "last_error": "Oura membership expired (403)",
    }


def test_a_wearable_data_row_with_an_undocumented_key_fails_the_metric_keys_check(landed):
    clean, settings = landed
    assert clean["wearable_data_metric_keys"].passed
    with_extra_key = query(
        settings,
        "UPDATE patient_graph.wearable_data SET metrics = json_merge_patch(metrics, ?) "
        "WHERE (patient_id, metric_type, day) = ('patient-a', 'sleep', ?) RETURNING day",
        [json.dumps({"snoring": 3}), START],
    )
    assert len(with_extra_key) == 1
    evaluation = materialize(checks_only=True)["wearable_data_metric_keys"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    unexpected = metadata(evaluation)["unexpected_shapes"]
    assert len(unexpected) == 1
    ((shape, count),) = unexpected.items()
    assert shape.startswith("sleep: ") and "'snoring'" in shape and count == 1


def test_daily_stats_disagreeing_with_wearable_data_fail_the_agreement_check(landed):
    clean, settings = landed
    assert clean["daily_stats_agree_with_wearable_data"].passed
    changed = query(
        settings,
        "UPDATE patient_graph.patient_wearable_daily_stats SET sleep_score = coalesce(sleep_score, 0) + 1 "
        "WHERE patient_id = 'patient-b' AND day IN (?, ?) RETURNING day",
        [START, END],
    )
    assert len(changed) == 2
    evaluation = materialize(checks_only=True)["daily_stats_agree_with_wearable_data"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert metadata(evaluation) == {"mismatched_days": 2, "checked": f"the run's days {START}..{END}"}
    assert materialize()["daily_stats_agree_with_wearable_data"].passed  # a re-sync rebuilds the stats


def test_a_check_that_raises_fails_its_step_after_the_other_checks_of_its_asset_answered(landed, monkeypatch):
    """All of `wearable_data`'s checks run in one step: one check's query failing must not hide the others'
    answers (as with a step per check), and the step, so the run, still fails with that error."""

    def broken(*args: object) -> None:
        raise RuntimeError("metric keys query broke")

    monkeypatch.setattr(wh, "wearable_data_key_shapes", broken)
    result = run_checks(dg.AssetSelection.checks_for_assets(WEARABLE_DATA_KEY))
    assert not result.success
    assert any("metric keys query broke" in text for text in failures(result))
    of_the_asset = {
        key.name
        for step in checks.CHECK_STEPS
        for key in step.check_keys
        if key.asset_key == WEARABLE_DATA_KEY
    }
    answered = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert len(of_the_asset) >= 8
    assert set(answered) == of_the_asset - {"wearable_data_metric_keys"}
    assert answered["connections_need_attention"].passed
