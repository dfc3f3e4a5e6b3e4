"""A whole run's sync without Dagster: `sync_patients` against the simulator over real HTTP on loopback and a
throwaway DuckDB file. One patient's failure stays that patient's; only failures of ours fail the run."""

from __future__ import annotations

import re
import sys
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
# What every sync here shares: the range, the run, two fetch threads.
RUN_ARGS = {"start": START, "end": END, "run_id": RUN_ID, "max_workers": 2, "purpose": "test run"}


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
        **RUN_ARGS,
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

    def __init__(self, *args, gate, hold_s=5.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate, self.hold_s = gate, hold_s

    def transaction(self, purpose, timeout_s=None):
        if self.gate and "raw documents" in purpose and not any("raw documents" in p for p in self.purposes):
            self.gate.wait(self.hold_s)
        return super().transaction(purpose, timeout_s)


class SamplesClient:
    """Heart rate from a list of samples (`samples_of(patient)`), opening `gate` once `expected` patients
    have been fetched; `doubled` patients' columns repeat every sample, which their insert refuses."""

    def __init__(self, patient_id, samples_of, fetched, gate, expected, doubled=frozenset()):
        self.patient_id, self.samples_of, self.fetched, self.gate = patient_id, samples_of, fetched, gate
        self.expected, self.doubled = expected, doubled

    def heartrate_columns(self, start, end):
        import pyarrow as pa

        from oura_assets.oura.heartrate_pages import HeartRateColumns, columns_of_samples

        self.fetched.append(self.patient_id)
        if len(self.fetched) == self.expected:
            self.gate.set()  # every patient fetched while the writer was held: they land as one group
        columns = columns_of_samples(self.samples_of(self.patient_id), start, end)
        if self.patient_id in self.doubled:
            return HeartRateColumns(pa.concat_tables([columns.table, columns.table]), 0, 1)
        return columns


def sample(hour: int, bpm: int = 60) -> dict:
    return {"timestamp": f"2024-06-11T{hour:02d}:00:00+00:00", "bpm": bpm, "source": "awake"}


def sync_heartrate(store, patients, samples_of, *, doubled=frozenset(), hold_gate=True):
    import threading

    fetched, gate = [], threading.Event()
    if hold_gate:
        store.gate = gate
    return heartrate_sync(
        store,
        patients,
        lambda p: SamplesClient(p, samples_of, fetched, gate, len(patients), doubled),
    )


def heartrate_sync(store, patients, client_for):
    """`sync_patients` of heart rate alone over START..END, two fetch threads, with `client_for`'s clients."""
    return sync_patients(
        patients=patients,
        client_for=client_for,
        warehouse=store,
        **RUN_ARGS,
        collections=["heartrate"],
        progress=RecordingLog(),
    )


def heartrate_rows(store) -> dict[str, list[tuple[str, int]]]:
    with store.connect("test: read heart rate") as conn:
        rows = conn.execute(
            "SELECT patient_id, strftime(timestamp, '%H'), bpm FROM oura_raw.heartrate ORDER BY ALL"
        ).fetchall()
    found: dict[str, list[tuple[str, int]]] = {}
    for patient_id, hour, bpm in rows:
        found.setdefault(patient_id, []).append((hour, bpm))
    return found


def test_a_group_counts_each_window_once_and_still_mirrors_a_window_already_held(tmp_path):
    # The group's stored samples are counted in one scan; a patient whose window holds samples must still
    # have it replaced (a sample Oura no longer sends goes), the others get a plain insert.
    store = HeldWarehouse(tmp_path / "warehouse.duckdb", gate=None)
    first = sync_heartrate(store, ["patient-a"], lambda _: [sample(8), sample(9)])
    assert [r.status for r in first.results] == ["success"]
    store.purposes.clear()
    patients = ["patient-b", "patient-c", "patient-d", "patient-a"]  # patient-a lands in the group
    again = sync_heartrate(
        store, patients, lambda p: [sample(9, 70), sample(10)] if p == "patient-a" else [sample(7)]
    )
    assert {r.patient_id: (r.status, r.rows) for r in again.results} == {
        "patient-a": ("success", {"oura_raw.heartrate": 2}),
        **{p: ("success", {"oura_raw.heartrate": 1}) for p in patients[:-1]},
    }
    assert max(int(re.findall(r"\d+", p)[0]) for p in store.purposes if "raw documents" in p) > 1
    assert heartrate_rows(store) == {
        "patient-a": [("09", 70), ("10", 60)],
        **{p: [("07", 60)] for p in patients[:-1]},
    }


def test_a_patient_whose_heart_rate_fails_to_land_fails_alone_in_its_group(tmp_path):
    store = HeldWarehouse(tmp_path / "warehouse.duckdb", gate=None)
    patients = ["patient-a", "patient-b", "patient-c", "patient-d"]
    outcome = sync_heartrate(
        store, patients, lambda _: [sample(7), sample(8)], doubled=frozenset({"patient-c"})
    )
    assert {r.patient_id: r.status for r in outcome.results} == {
        "patient-a": "success",
        "patient-b": "success",
        "patient-c": "failed",
        "patient-d": "success",
    }
    sizes = [int(re.findall(r"\d+", p)[0]) for p in store.purposes if "raw documents" in p]
    assert max(sizes) > 1 and sizes.count(1) >= 3  # the group failed, then its patients landed one by one
    assert heartrate_rows(store) == {p: [("07", 60), ("08", 60)] for p in patients if p != "patient-c"}
    assert recorded_in(store)["patient-c"] == ("failed", ["internal_error"])


def recorded_in(store) -> dict[str, tuple[str, list[str]]]:
    with store.connect("test: read results") as conn:
        results = wh.sync_results_for_run(conn, RUN_ID)
    return {r.patient_id: (r.status, [e["code"] for e in r.errors]) for r in results}


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
    outcome = heartrate_sync(store, patients, lambda _: Client())
    assert [r.status for r in outcome.results] == ["success"] * len(patients)
    assert gate.is_set()
    sizes = [int(re.findall(r"\d+", p)[0]) for p in store.purposes if "raw documents" in p]
    assert sum(sizes) == len(patients) and max(sizes) > 2 * 2  # more than the old bound could queue


def test_fetching_pauses_once_the_heart_rate_waiting_for_the_writer_reaches_its_bound(tmp_path, monkeypatch):
    import threading

    from oura_assets import sync

    monkeypatch.setattr(sync, "MAX_HELD_BYTES", 1)  # one landing's heart rate is already over it
    store = HeldWarehouse(tmp_path / "warehouse.duckdb", gate=threading.Event(), hold_s=1.0)
    patients = [f"patient-{n:02d}" for n in range(8)]
    outcome = sync_heartrate(store, patients, lambda _: [sample(7)], hold_gate=False)
    assert [r.status for r in outcome.results] == ["success"] * len(patients)
    sizes = [int(re.findall(r"\d+", p)[0]) for p in store.purposes if "raw documents" in p]
    # While the writer was held, only the fetches already in flight (2) joined the one waiting.
    assert sum(sizes) == len(patients) and max(sizes) <= 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own priority is Linux's")
def test_fetch_threads_run_below_the_writers_priority(tmp_path):
    # The writer is a run's one serial step: the fetch threads parse beside it at a lower priority.
    import os
    import threading

    from oura_assets.oura.heartrate_pages import columns_of_samples
    from oura_assets.warehouse import group_writer

    priorities = []

    class Client:
        def heartrate_columns(self, start, end):
            priorities.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return columns_of_samples([sample(8)], start, end)

    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    outcome = heartrate_sync(wh.Warehouse(tmp_path / "warehouse.duckdb"), ["a", "b", "c"], lambda _: Client())
    assert [r.status for r in outcome.results] == ["success"] * 3
    assert priorities == [min(19, own + group_writer.FETCH_THREAD_NICENESS)] * 3
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # the caller's is its own
