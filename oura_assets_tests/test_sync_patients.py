"""A whole run's sync without Dagster: `sync_patients` against the simulator over real HTTP on loopback and a
throwaway DuckDB file. One patient's failure stays that patient's; only failures of ours fail the run."""

from __future__ import annotations

import re
from datetime import date

import pytest

from oura_assets import warehouse as wh
from oura_assets.config import Settings
from oura_assets.oura.client import OuraClient, RetryPolicy
from oura_assets.oura.oauth import OuraOAuthApp
from oura_assets.sync import RefetchPolicy, sync_patients
from oura_assets.sync_outcome import RunOutcome
from oura_assets.tokens import PatientTokens, TokenCipher

START, END = date(2024, 6, 10), date(2024, 6, 12)
RUN_ID = "run-under-test"
# A dead port on loopback: every request is refused at once.
UNREACHABLE = "http://127.0.0.1:9"


class RecordingLog:
    """Collects progress lines the way `context.log` would show them."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, msg: str) -> None:
        self.lines.append(("info", msg))

    def warning(self, msg: str) -> None:
        self.lines.append(("warning", msg))

    def error(self, msg: str) -> None:
        self.lines.append(("error", msg))


class BuggyClient:
    """A client that breaks in a way nobody planned for."""

    def documents(self, collection, start, end):
        raise RuntimeError("a bug in our code")

    def heartrate(self, start, end):
        raise RuntimeError("a bug in our code")

    heartrate_columns = heartrate


def run(
    settings: Settings,
    patients: list[str],
    *,
    base_url: str | None = None,
    buggy: frozenset[str] = frozenset(),
    progress: RecordingLog | None = None,
) -> RunOutcome:
    store = wh.Warehouse(settings.warehouse_path)
    oauth = OuraOAuthApp.from_settings(settings)
    cipher = TokenCipher(settings.token_keys)

    def client_for(patient_id: str) -> OuraClient:
        if patient_id in buggy:
            return BuggyClient()  # type: ignore[return-value]
        tokens = PatientTokens(
            patient_id=patient_id, warehouse=store, cipher=cipher, oauth_app=oauth, lock_dir=settings.lock_dir
        )
        # One attempt: a fault below is meant to be final, and retrying it would only slow the test down.
        return OuraClient(base_url or settings.api_base_url, tokens, retry=RetryPolicy(attempts=1))

    return sync_patients(
        patients=patients,
        client_for=client_for,
        warehouse=store,
        start=START,
        end=END,
        run_id=RUN_ID,
        max_workers=2,
        purpose="test run",
        progress=progress or RecordingLog(),
        # Refetch passes run, without their cool-down's real wait.
        refetch=RefetchPolicy(sleep=lambda _: None),
    )


def recorded(settings: Settings) -> dict[str, tuple[str, list[str]]]:
    """Each patient's recorded sync result in the run: status and error codes."""
    with wh.Warehouse(settings.warehouse_path).connect("test: read results") as conn:
        results = wh.sync_results_for_run(conn, RUN_ID)
    return {r.patient_id: (r.status, [e["code"] for e in r.errors]) for r in results}


def connections(settings: Settings) -> dict[str, tuple[str, str | None, bool]]:
    """Each connection's status, last error, and whether it has ever synced."""
    with wh.Warehouse(settings.warehouse_path).connect("test: read connections") as conn:
        rows = conn.execute(
            "SELECT patient_id, status, last_error, last_synced_at IS NOT NULL "
            "FROM patient_graph.wearable_connections"
        ).fetchall()
    return {patient: (status, error, synced) for patient, status, error, synced in rows}


def raw_patients(settings: Settings) -> set[str]:
    with wh.Warehouse(settings.warehouse_path).connect("test: raw patients") as conn:
        return {
            p for (p,) in conn.execute("SELECT DISTINCT patient_id FROM oura_raw.daily_readiness").fetchall()
        }


def test_all_patients_succeed_and_are_recorded(pipeline_env, connect_patient):
    patients = [f"patient-{n}" for n in range(3)]
    for patient in patients:
        connect_patient(patient)
    progress = RecordingLog()
    outcome = run(pipeline_env, patients, progress=progress)

    assert sorted(r.patient_id for r in outcome.results) == patients
    assert (outcome.patients, outcome.patients_ok, outcome.patients_failed) == (3, 3, 0)
    assert outcome.failed_patients == {} and outcome.failure is None
    rows = outcome.rows(["oura_raw.daily_readiness", "oura_raw.heartrate"])
    assert rows["oura_raw.daily_readiness"] > 0 and rows["oura_raw.heartrate"] > 0
    assert recorded(pipeline_env) == {p: ("success", []) for p in patients}
    assert connections(pipeline_env) == {p: ("active", None, True) for p in patients}
    assert raw_patients(pipeline_env) == set(patients)
    done = [msg for level, msg in progress.lines if level == "info" and " of 3 (" in msg]
    assert len(done) == 3 and all("success (no errors)" in msg and " rows in " in msg for msg in done)


def test_unexpected_exception_fails_only_that_patient_as_internal_error(pipeline_env, connect_patient):
    for patient in ("patient-ok", "patient-buggy", "patient-also-ok"):
        connect_patient(patient)
    progress = RecordingLog()
    outcome = run(
        pipeline_env,
        ["patient-ok", "patient-buggy", "patient-also-ok"],
        buggy=frozenset({"patient-buggy"}),
        progress=progress,
    )

    assert recorded(pipeline_env) == {
        "patient-ok": ("success", []),
        "patient-buggy": ("failed", ["internal_error"]),
        "patient-also-ok": ("success", []),
    }
    assert raw_patients(pipeline_env) == {"patient-ok", "patient-also-ok"}
    assert outcome.failed_patients == {"patient-buggy": ["internal_error"]}
    assert (outcome.patients_ok, outcome.patients_failed) == (2, 1) and outcome.failure is None
    errors = [msg for level, msg in progress.lines if level == "error"]
    assert len(errors) == 1 and errors[0].startswith("patient patient-buggy: unexpected error\nTraceback")
    assert "RuntimeError: a bug in our code" in errors[0]


def test_forbidden_patient_records_membership_expired_and_the_run_does_not_fail(
    pipeline_env, connect_patient, simulator
):
    connect_patient("patient-ok")
    expired = connect_patient("patient-expired")
    simulator.control.set_faults(users={expired.ring_user: {"forbidden": True}})
    outcome = run(pipeline_env, ["patient-ok", "patient-expired"])

    assert recorded(pipeline_env) == {
        "patient-ok": ("success", []),
        "patient-expired": ("failed", ["subscription_expired"]),
    }
    assert connections(pipeline_env) == {
        "patient-ok": ("active", None, True),
        "patient-expired": ("active", "Oura membership expired (403)", False),
    }
    assert outcome.failure is None and (outcome.patients_ok, outcome.patients_failed) == (1, 1)


@pytest.mark.parametrize("fault", ["oura-5xx", "oura-unreachable"])
def test_every_patient_failing_for_infrastructure_reasons_fails_the_run(
    pipeline_env, connect_patient, simulator, fault
):
    for patient in ("patient-a", "patient-b"):
        connect_patient(patient)
    if fault == "oura-5xx":
        simulator.control.set_faults(error_rate=1.0)
    outcome = run(
        pipeline_env,
        ["patient-a", "patient-b"],
        base_url=UNREACHABLE if fault == "oura-unreachable" else None,
    )

    assert {status for status, _ in recorded(pipeline_env).values()} == {"failed"}
    assert outcome.patients_failed == 2 and outcome.patients_ok == 0
    assert all(codes and set(codes) == {"oura_unavailable"} for codes in outcome.failed_patients.values())
    assert outcome.failure is not None and outcome.failure.startswith("all 2 patient(s) failed; first: ")
    assert connections(pipeline_env) == {p: ("active", None, False) for p in ("patient-a", "patient-b")}


def test_every_patient_failing_patient_side_does_not_fail_the_run(pipeline_env, connect_patient, simulator):
    rejected = {"expire_access_tokens": True, "refresh_reject": True}
    users = {connect_patient(p).ring_user: rejected for p in ("patient-a", "patient-b")}
    simulator.control.set_faults(users=users)
    outcome = run(pipeline_env, ["patient-a", "patient-b"])

    assert recorded(pipeline_env) == {
        "patient-a": ("failed", ["reconnect_required"]),
        "patient-b": ("failed", ["reconnect_required"]),
    }
    assert outcome.patients_failed == 2 and outcome.failure is None
    assert {status for status, _, _ in connections(pipeline_env).values()} == {"reconnect_required"}


def test_no_patients_is_an_empty_outcome_that_does_not_fail(pipeline_env):
    outcome = run(pipeline_env, [])
    assert outcome.results == [] and outcome.failure is None and recorded(pipeline_env) == {}


class CountingWarehouse(wh.Warehouse):
    """Notes the purpose of every transaction the run opens."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.purposes: list[str] = []

    def reporting_waits_to(self, log):
        return self

    def transaction(self, purpose, timeout_s=None):
        self.purposes.append(purpose)
        return super().transaction(purpose, timeout_s)


def test_a_patients_rows_and_its_recorded_result_land_in_one_transaction(pipeline_env, connect_patient):
    # Every hold of the warehouse lock costs a DuckDB open and close; a run landing rows and result apart
    # paid two per patient, which on a loaded host bounded a run below its rate budget.
    patients = ["patient-a", "patient-b"]
    for patient in patients:
        connect_patient(patient)
    store = CountingWarehouse(pipeline_env.warehouse_path)
    oauth, cipher = OuraOAuthApp.from_settings(pipeline_env), TokenCipher(pipeline_env.token_keys)
    outcome = sync_patients(
        patients=patients,
        client_for=lambda p: OuraClient(
            pipeline_env.api_base_url,
            PatientTokens(
                patient_id=p, warehouse=store, cipher=cipher, oauth_app=oauth, lock_dir=pipeline_env.lock_dir
            ),
        ),
        warehouse=store,
        start=START,
        end=END,
        run_id=RUN_ID,
        purpose="test run",
    )
    assert [r.status for r in outcome.results] == ["success", "success"]
    landing = [p for p in store.purposes if not p.startswith("tokens:")]  # token reads are the tokens' own
    # Only landing transactions, and together they landed each patient once: no result recorded apart from
    # its rows (the run's writer may put both patients in one transaction when both wait for it).
    assert landing and all(re.fullmatch(r"test run: raw documents for \d+ patient\(s\)", p) for p in landing)
    assert sum(int(re.findall(r"\d+", p)[0]) for p in landing) == len(patients)
    assert recorded(pipeline_env) == {p: ("success", []) for p in patients}
    assert connections(pipeline_env) == {p: ("active", None, True) for p in patients}


class HeldWarehouse(CountingWarehouse):
    """Holds its first landing transaction until `gate` opens (or 5 s pass), as a slow writer would."""

    def __init__(self, *args, gate, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate

    def transaction(self, purpose, timeout_s=None):
        if "raw documents" in purpose and not any("raw documents" in p for p in self.purposes):
            self.gate.wait(5)
        return super().transaction(purpose, timeout_s)


def test_fetching_runs_ahead_of_a_busy_writer_by_a_whole_group(tmp_path):
    # A group's commit and checkpoint cost far less than in proportion to its rows, so the writer must be
    # able to find a whole group waiting; the bound on what waits used to be 2 x the fetch threads.
    import threading
    from datetime import UTC, datetime

    from oura_assets.oura.heartrate_pages import columns_of_samples

    patients = [f"patient-{n:02d}" for n in range(16)]
    fetched, gate = [], threading.Event()

    class Client:
        def heartrate_columns(self, start, end):
            fetched.append(1)
            if len(fetched) == len(patients):
                gate.set()  # every patient fetched while the writer was held
            sample = {
                "timestamp": datetime(2024, 6, 11, 8, tzinfo=UTC).isoformat(),
                "bpm": 60,
                "source": "awake",
            }
            return columns_of_samples([sample], start, end)

    store = HeldWarehouse(tmp_path / "warehouse.duckdb", gate=gate)
    outcome = sync_patients(
        patients=patients,
        client_for=lambda _: Client(),  # type: ignore[arg-type,return-value]
        warehouse=store,
        start=START,
        end=END,
        run_id=RUN_ID,
        collections=["heartrate"],
        max_workers=2,
        purpose="test run",
        progress=RecordingLog(),
    )
    assert [r.status for r in outcome.results] == ["success"] * len(patients)
    assert gate.is_set()
    sizes = [int(re.findall(r"\d+", p)[0]) for p in store.purposes if "raw documents" in p]
    assert sum(sizes) == len(patients) and max(sizes) > 2 * 2  # more than the old bound could queue
