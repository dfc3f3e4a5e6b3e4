"""Every example question in the README, in SQL and in polars, run against a real run on the simulator.

The examples are read from README.md itself (`<!-- example: name [requires: table] -->`, then a `sql` and a
`python` block), so the README and this test cannot drift. Both answers must agree, column for column.
An example whose table another part of the pipeline has not created yet is skipped, naming the table.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import duckdb
import pytest
from cryptography.fernet import Fernet

from oura_assets import warehouse as wh
from oura_assets.config import load_settings
from oura_assets.simulator import SimulatorServer
from oura_assets_tests import support
from oura_assets_tests.conftest import TEST_CLIENT_ID, TEST_CLIENT_SECRET, TEST_REDIRECT_URI, simulator_config

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLE = re.compile(
    r"<!-- example: (?P<name>\S+)(?: requires: (?P<requires>\S+))? -->\s*"
    r"```sql\n(?P<sql>.*?)```\s*```python\n(?P<python>.*?)```",
    re.DOTALL,
)
SETUP = re.compile(r"<!-- example-setup -->\s*```python\n(?P<python>.*?)```", re.DOTALL)
PATIENTS = ("patient-a", "patient-b", "patient-c")
# Four weeks, so the 7-day windows fill and a month boundary is crossed.
START, END = date(2024, 5, 20), date(2024, 6, 16)

README_TEXT = README.read_text()
EXAMPLES = {m["name"]: m for m in EXAMPLE.finditer(README_TEXT)}


def test_readme_has_the_six_questions():
    assert {
        "hrv_7d_trend",
        "nights_under_6h",
        "days_not_worn_per_month",
        "revised_scores",
        "no_data_for_3_days",
        "sleep_vs_readiness",
    } <= set(EXAMPLES)
    assert SETUP.search(README_TEXT)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder laid out like a checkout after `make demo`: data/analytics.duckdb from a real run."""
    root = tmp_path_factory.mktemp("readme")
    with SimulatorServer(simulator_config()) as simulator, pytest.MonkeyPatch.context() as env:
        env.delenv("OURA_ASSETS_DEMO", raising=False)
        env.delenv("OURA_ASSETS_ANALYTICS", raising=False)
        for name, value in {
            "OURA_CLIENT_ID": TEST_CLIENT_ID,
            "OURA_CLIENT_SECRET": TEST_CLIENT_SECRET,
            "OURA_REDIRECT_URI": TEST_REDIRECT_URI,
            "OURA_API_BASE_URL": simulator.url,
            "OURA_AUTHORIZE_URL": simulator.url + "/oauth/authorize",
            "OURA_TOKEN_URL": simulator.url + "/oauth/token",
            "OURA_REVOKE_URL": simulator.url + "/oauth/revoke",
            "OURA_ASSETS_TOKEN_KEY": Fernet.generate_key().decode(),
            "OURA_ASSETS_WAREHOUSE": str(root / "data" / "warehouse.duckdb"),
            "OURA_ASSETS_START_DATE": "2024-01-01",
        }.items():
            env.setenv(name, value)
        settings = load_settings(require=("oauth", "tokens"))
        wh.Warehouse(settings.warehouse_path).ensure_schema()
        for patient_id in PATIENTS:
            support.connect_patient(settings, patient_id, learn_oura_user_id=False)
        result = support.run_sync(START, END, run_config=support.UNPACED)
        assert result.success, support.failures(result)
        assert settings.analytics_path == root / "data" / "analytics.duckdb"
        yield root


def _comparable(rows: list[tuple]) -> list[tuple]:
    def value(v: object) -> object:
        return round(v, 6) if isinstance(v, float) else v

    return sorted((tuple(value(v) for v in row) for row in rows), key=repr)


def _missing_table(root: Path, requires: str | None) -> str | None:
    if not requires:
        return None
    schema, table = requires.split(".", 1)
    with duckdb.connect(str(root / "data" / "analytics.duckdb"), read_only=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?", [schema, table]
        ).fetchone()[0]
    return None if found else requires


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_readme_example_sql_and_polars_agree(name: str, demo_root: Path, monkeypatch: pytest.MonkeyPatch):
    example = EXAMPLES[name]
    missing = _missing_table(demo_root, example["requires"])
    if missing:
        pytest.skip(f"table {missing} missing (added by another branch; this example runs once it lands)")
    monkeypatch.chdir(demo_root)
    with duckdb.connect("data/analytics.duckdb", read_only=True) as conn:
        answer = conn.execute(example["sql"])
        sql_columns = [d[0] for d in answer.description]
        sql_rows = answer.fetchall()
    namespace: dict[str, object] = {}
    exec(SETUP.search(README_TEXT)["python"], namespace)  # noqa: S102 (the README's own code)
    try:
        exec(example["python"], namespace)  # noqa: S102
    finally:
        namespace["con"].close()
    result = namespace["result"]
    assert result.columns == sql_columns
    assert _comparable(result.rows()) == _comparable(sql_rows)
    if name in {"hrv_7d_trend", "sleep_vs_readiness", "no_data_for_3_days", "days_not_worn_per_month"}:
        assert sql_rows, f"{name} answered nothing on four weeks of simulated data"
