"""Shared fixtures: a simulator on loopback, a throwaway warehouse, settings pointing at both, and patients
connected through the real OAuth code flow (the helpers themselves are in `support.py`, shared with bench/).

The connection API's helpers (keys, hand-built JWTs, a JWKS server, an API harness) are in `api_support.py`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from cryptography.fernet import Fernet
from hypothesis import settings as hypothesis_settings

from oura_assets import warehouse as wh
from oura_assets.config import Settings, load_settings
from oura_assets.simulator import ClientRegistration, SimulatorConfig, SimulatorServer
from oura_assets.warehouse.lake import ALIAS as LAKE_ALIAS
from oura_assets.warehouse.lake import attach_lake
from oura_assets.warehouse.migrations import ensure_schema_on
from oura_assets_tests import postgres_server as postgres
from oura_assets_tests import support
from oura_assets_tests.support import ConnectedPatient

# Speed is measured in bench/, not asserted in unit tests: Hypothesis's default 200 ms per-example deadline
# turns a busy 2-core CI machine into a DeadlineExceeded/Flaky failure that says nothing about correctness.
hypothesis_settings.register_profile("oura_assets", deadline=None)
hypothesis_settings.load_profile("oura_assets")


# Tests whose processes race each other for the warehouse, the token journal or the Oura budget under real
# deadlines (a lock wait, an API's 503 after a few seconds, a daemon's poll): under xdist they run one after
# another in one group, never two of them at once, so a CI machine's two cores are never shared by two such
# races. Named by file and function (every parametrization); a name that no longer matches only loses this.
# Under `make test`'s three workers a race shares the two cores with two other workers' tests: every file
# holding one passed with two cores kept busy by spinning processes (126 tests, 191 s, 2026-12-04).
# Not here, though they start processes: tests that only count or compare what their own processes did to
# their own files, with no deadline a slow host could miss (`test_many_writer_processes_lose_no_write`: four
# writers, a 60 s lock wait each behind three short transactions; `test_snapshot_held_open_by_another_process_
# never_delays_a_run`: a reader holding its own snapshot file, the run's time printed, not asserted;
# `test_range_backfill_launched_from_the_ui_runs_once_and_records_sync_events`: its own Dagster home, ports
# and warehouse, and only minute-long waits for the webserver, the daemon and the sensor, which a shared core
# stretches but does not break: 72 s under a load of 8 on two cores, 31 s idle, against 90-180 s waits).
PROCESS_RACES = frozenset(
    {
        "test_api_server.py::test_api_writes_while_another_process_holds_and_writes_the_warehouse",
        "test_concurrency.py::test_api_hammered_from_threads_while_a_run_materializes",
        "test_coordination_postgres.py::test_processes_on_two_hosts_refresh_a_patient_once",
        "test_coordination_postgres.py::test_control_per_host_files_let_two_hosts_spend_one_refresh_token_twice",
        "test_coordination_postgres.py::test_a_pair_journaled_on_a_host_killed_after_oura_answered_is_applied_on_another_host",
        "test_coordination_postgres.py::test_a_grant_of_a_callback_killed_on_one_host_is_stored_by_another_hosts_recovery",
        "test_concurrency.py::test_a_lock_held_too_long_names_its_holder_to_the_api_log_and_the_failed_run",
        "test_concurrency.py::test_sensors_evaluated_by_another_process_while_a_run_writes",
        "test_rate_budget.py::test_two_processes_share_one_budget_under_a_tight_limit_with_few_429s",
        "test_rate_budget_postgres.py::test_three_processes_on_one_postgres_budget_stay_within_the_limit_and_share_it_fairly",
        "test_rate_budget.py::test_a_new_patients_sync_lands_while_a_backfill_in_another_process_keeps_going",
        "test_run_kill.py::test_killed_run_leaves_no_process_and_is_marked_failed",
        "test_token_journal.py::test_fault_kill_9_after_oura_rotated_the_pair_keeps_the_connection",
        "test_token_journal.py::test_fault_api_killed_between_code_exchange_and_store_recovers_the_grant_at_start",
        "test_tokens.py::test_processes_refreshing_the_same_patient_spend_the_refresh_token_once",
        "test_tokens.py::test_sim_processes_refreshing_the_same_patient_spend_the_refresh_token_once",
        "test_warehouse.py::test_a_back_to_back_writer_process_does_not_starve_a_waiting_request",
        "test_warehouse.py::test_a_process_whose_threads_queue_back_to_back_does_not_starve_another_process",
        "test_warehouse.py::test_waiter_gets_the_warehouse_once_the_other_process_lets_go",
    }
)


# Where the tests' temporary directories go when the machine has a large enough RAM-backed /dev/shm.
TMPFS = Path("/dev/shm")
TMPFS_MIN_FREE = 4 * 1024**3


def let_children_be_terminated() -> None:
    """Make SIGTERM end the processes the tests start, however the suite itself was launched.

    A suite started in the background of a non-interactive shell (`make test &`, `nohup`, some CI runners)
    inherits SIGINT ignored. Dagster, executing a run on the main thread, puts its own SIGINT handler in
    place and afterwards copies SIGINT's disposition onto SIGTERM (`dagster._utils.interrupts`): SIGTERM
    became ignored in the test process, and every child started after that inherited it. Stopping such a
    child (`support.stop_process`) then waited out its 60 s before the SIGKILL: measured, the newcomer-during-
    a-backfill test took 68 s instead of 8, the first-data lane's test 66 s instead of 6. So the test
    process takes SIGINT back (Python's own KeyboardInterrupt) and SIGTERM's default, as in a foreground run.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pytest_configure(config: pytest.Config) -> None:
    """Put `tmp_path` (warehouses, lakes, Dagster homes) on tmpfs when /dev/shm has room, not on the disk.

    No test is about surviving a power cut (a killed process loses nothing on tmpfs either), yet each commit
    to a file-backed Dagster instance (SQLite in WAL mode) and each DuckDB checkpoint waits for an fsync:
    12,868 of them, 18.5 s of waiting, in the sensor-process test alone on a 2-core host whose disk other
    jobs share. The throwaway PostgreSQL cluster already runs with fsync off for the same reason.

    An explicit `--basetemp` or PYTEST_DEBUG_TEMPROOT (pytest's own switch, read here and inherited by the
    xdist workers) wins; a small /dev/shm (Docker's default is 64 MB) leaves the system temp directory.
    """
    let_children_be_terminated()
    config.pluginmanager.register(GroupedNodeIds(), "oura_assets_grouped_node_ids")
    if config.option.basetemp or "PYTEST_DEBUG_TEMPROOT" in os.environ:
        return
    try:
        roomy = os.access(TMPFS, os.W_OK) and shutil.disk_usage(TMPFS).free >= TMPFS_MIN_FREE
    except OSError:
        roomy = False
    if roomy:
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(TMPFS)


class GroupedNodeIds:
    """Give each grouped test the `@group` node id suffix that `--dist loadgroup` schedules by.

    pytest-xdist's worker writes the suffix into `item._nodeid`, which pytest 9.2 no longer reads (node ids
    are structured, `item._id`): every `xdist_group` was silently ignored, so the process races ran side by
    side and each module-scoped setup ran on both workers (the README examples' 21 s run, twice). Upstream:
    pytest-dev/pytest-xdist#1386. Runs after xdist's hook (`trylast`) and leaves a suffix that is already
    there alone, so a fixed xdist makes this a no-op; without `item._id` it does nothing.
    """

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if not getattr(config.option, "loadgroup", False):
            return
        try:
            from _pytest.nodeid import coerce_node_id  # pytest >= 9.2, the version whose ids need this
        except ImportError:
            return

        for item in items:
            names = {
                str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                for mark in item.iter_markers("xdist_group")
            }
            suffix = "@" + "_".join(sorted(names))
            if names and hasattr(item, "_id") and not item.nodeid.endswith(suffix):
                item._id = coerce_node_id(item.nodeid + suffix)


# `tryfirst`: the groups are marked before pytest-xdist's worker reads the marks (its hook is registered after
# this conftest, so it would otherwise be called first and see none).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order and group the tests for `make test`'s xdist workers (`-n 3 --dist loadgroup`).

    Tests marked `slow` (each a long wait on child processes or a long run) go first, so the short ones fill
    in around them and the workers finish together instead of one of them starting a 60 s test last.
    The `PROCESS_RACES` share one xdist group (one worker, one at a time). A test that uses a module-scoped
    fixture (one expensive setup shared read-only by its module) is grouped with the rest of its module on
    one worker, so that setup runs once, not once per worker. Without xdist the group marks are inert and the
    order is still a valid one: no test depends on another having run.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise
    for item in items:
        function = getattr(item, "originalname", item.name)
        if f"{item.path.name}::{function}" in PROCESS_RACES:
            item.add_marker(pytest.mark.xdist_group("process-races"))
            continue
        # `_fixtureinfo` is pytest's (private, long-stable) record of the fixtures a test item resolves.
        info = getattr(item, "_fixtureinfo", None)
        definitions = info.name2fixturedefs.values() if info is not None else ()
        if any(defs and defs[-1].scope in ("module", "package") for defs in definitions):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


TEST_CLIENT_ID = "test-client"
TEST_CLIENT_SECRET = "test-client-secret-0123456789"
TEST_REDIRECT_URI = "http://127.0.0.1:9/api/patient-graph/wearables/callback/oura"


def simulator_config(**options: Any) -> SimulatorConfig:
    """The simulator's configuration with the test client registered (`options`: any other field)."""
    return SimulatorConfig(
        clients={
            TEST_CLIENT_ID: ClientRegistration(secret=TEST_CLIENT_SECRET, redirect_uris=(TEST_REDIRECT_URI,))
        },
        **options,
    )


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(simulator_config()) as server:
        yield server


@pytest.fixture(params=["duckdb", "ducklake"])
def warehouse_backend(request: pytest.FixtureRequest) -> str:
    """Run the requesting test on both warehouse backends: a DuckDB file and a DuckLake (PostgreSQL catalog,
    local data folder). A test asks for it by naming it; `pipeline_env` then points at that backend."""
    return str(request.param)


_LAKES = itertools.count()


@pytest.fixture(scope="session")
def lake_template(postgres_server: postgres.PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A catalog database holding a new DuckLake with the current schema (`ensure_schema_on`), made once per
    session (per xdist worker) for `lake_env` to copy: creating the schema's tables in a DuckLake is some 60
    catalog transactions, 1-3 s a lake, where PostgreSQL copies the finished catalog (`CREATE DATABASE ...
    TEMPLATE`) in a tenth of a second. Never written after this: a template must have no open connection
    when it is copied, so it is made through a DuckDB instance of its own, closed here."""
    name = f"lake_template_{os.getpid()}"
    dsn = postgres_server.create_database(name)
    location = wh.lake_location(f"ducklake:postgres:{dsn}", str(tmp_path_factory.mktemp("lake-template")))
    conn = duckdb.connect()
    try:
        attach_lake(conn, location)
        conn.execute(f'USE "{LAKE_ALIAS}"')
        ensure_schema_on(conn)
    finally:
        conn.close()
    return name


def new_lake_env(request: pytest.FixtureRequest, tmp_path: Path, *, migrated: bool) -> dict[str, str]:
    """The variables of a new DuckLake in its own catalog database of the session's PostgreSQL server, with
    its data folder under `tmp_path`: a copy of `lake_template` (the schema made, no rows) when `migrated`,
    else a blank catalog database."""
    server: postgres.PostgresServer = request.getfixturevalue("postgres_server")
    name = f"lake_{os.getpid()}_{next(_LAKES)}"
    data_path = tmp_path / "lake-data"
    if migrated:
        server.create_database(name, template=request.getfixturevalue("lake_template"))
        # The copy still names the template's data folder; a lake keeps its data path in its catalog (with
        # the trailing slash DuckLake adds), so it is pointed at its own, as ATTACH ... (DATA_PATH) gives it.
        stored = str(data_path.expanduser().resolve()).replace("'", "''") + "/"
        update = f"UPDATE ducklake_metadata SET value = '{stored}' WHERE key = 'data_path'"  # noqa: S608 (a quoted path)
        server.psql(update, dbname=name)
    else:
        server.create_database(name)
    return {
        "OURA_ASSETS_WAREHOUSE": f"ducklake:postgres:{server.dsn(name)}",
        "OURA_ASSETS_LAKE_DATA_PATH": str(data_path),
        "OURA_ASSETS_DATA_DIR": str(tmp_path),
    }


@pytest.fixture
def lake_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """`OURA_ASSETS_WAREHOUSE` / `OURA_ASSETS_LAKE_DATA_PATH` of a new DuckLake at the current schema with no
    rows (its own catalog database in the session's PostgreSQL server, a data folder under `tmp_path`), as
    `Warehouse.ensure_schema` leaves a new lake; `blank_lake_env` is a catalog with nothing in it yet."""
    return new_lake_env(request, tmp_path, migrated=True)


@pytest.fixture
def blank_lake_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """`lake_env` for an empty catalog database: the lake does not exist until something attaches it."""
    return new_lake_env(request, tmp_path, migrated=False)


@pytest.fixture
def pipeline_env(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    simulator: SimulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """Environment as a real deployment sets it, pointed at the simulator and a throwaway warehouse (a
    DuckLake when the test also asks for `warehouse_backend` and gets "ducklake")."""
    env = pipeline_environment(simulator, tmp_path / "warehouse.duckdb")
    if (
        "warehouse_backend" in request.fixturenames
        and request.getfixturevalue("warehouse_backend") == "ducklake"
    ):
        env.update(request.getfixturevalue("lake_env"))
    return use_pipeline_environment(env, monkeypatch)


def pipeline_environment(simulator: SimulatorServer, warehouse: Path) -> dict[str, str]:
    """The environment `pipeline_env` sets: the simulator as Oura, a new token key, `warehouse` (its folder
    the data folder)."""
    return {
        "OURA_CLIENT_ID": TEST_CLIENT_ID,
        "OURA_CLIENT_SECRET": TEST_CLIENT_SECRET,
        "OURA_REDIRECT_URI": TEST_REDIRECT_URI,
        "OURA_API_BASE_URL": simulator.url,
        "OURA_AUTHORIZE_URL": simulator.url + "/oauth/authorize",
        "OURA_TOKEN_URL": simulator.url + "/oauth/token",
        "OURA_REVOKE_URL": simulator.url + "/oauth/revoke",
        "OURA_ASSETS_TOKEN_KEY": Fernet.generate_key().decode(),
        "OURA_ASSETS_WAREHOUSE": str(warehouse),
        "OURA_ASSETS_START_DATE": "2024-01-01",
    }


def use_pipeline_environment(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Set `env` (from `pipeline_environment`) for as long as `monkeypatch` lasts and ensure the warehouse's
    schema; the settings it loads to. A module-scoped fixture passes a `pytest.MonkeyPatch.context()`."""
    monkeypatch.delenv("OURA_ASSETS_DEMO", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(require=("oauth", "tokens"))
    wh.Warehouse(settings.warehouse_path).ensure_schema()
    return settings


@pytest.fixture
def connect_patient(pipeline_env: Settings) -> Callable[..., ConnectedPatient]:
    """Connect a patient through the OAuth code flow and store the tokens as the callback does."""

    def connect(patient_id: str, ring_user: str | None = None, **options: Any) -> ConnectedPatient:
        return support.connect_patient(pipeline_env, patient_id, ring_user, **options)

    return connect


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    """A real PostgreSQL cluster on 127.0.0.1 for this test session (one per xdist worker); tests make their
    own databases in it (`postgres_server.create_database(...)`)."""
    with postgres.running_postgres() as server:
        yield server


@pytest.fixture
def postgres_budget(postgres_server: postgres.PostgresServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Oura rate budget in a fresh PostgreSQL database, named in OURA_ASSETS_RATE_BUDGET as a deployment
    on several hosts names it (every process this test starts inherits it); its DSN."""
    dsn = postgres_server.create_database(f"budget_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("OURA_ASSETS_RATE_BUDGET", f"postgres:{dsn}")
    return dsn
