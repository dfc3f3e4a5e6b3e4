"""DuckDB's parameter binding no longer searches the import path for pandas (oura_assets.absent_modules)."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import duckdb
import polars as pl
import pytest

import oura_assets  # noqa: F401 (installs the finder)
from oura_assets.absent_modules import AbsentModules, install


class _Spy:
    """Counts the lookups that got past the finders before it."""

    def __init__(self) -> None:
        self.looked_for: Counter[str] = Counter()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        self.looked_for[fullname] += 1
        return None


def _lookups_while_binding(spy_position: int) -> Counter[str]:
    spy = _Spy()
    sys.meta_path.insert(spy_position, spy)
    try:
        conn = duckdb.connect()
        for i in range(5):
            conn.execute("SELECT ?, ?, ?", [i, "text", datetime(2024, 6, 1, tzinfo=UTC)]).fetchone()
        conn.close()
    finally:
        sys.meta_path.remove(spy)
    return spy.looked_for


def test_duckdb_parameters_no_longer_search_the_path_for_pandas() -> None:
    finder = next((f for f in sys.meta_path if isinstance(f, AbsentModules)), None)
    if finder is None and importlib.util.find_spec("pandas") is not None:
        pytest.skip("pandas is installed here: nothing to refuse")
    assert finder is not None, "oura_assets did not install the finder although pandas is absent"
    # The spy first on the path sees what DuckDB asks for: pandas, on every parameter of every statement.
    assert _lookups_while_binding(0)["pandas"] >= 15
    # Behind the finder, none of those lookups reach the path search.
    assert sys.meta_path.index(finder) == 0
    assert _lookups_while_binding(1)["pandas"] == 0
    with pytest.raises(ModuleNotFoundError):
        import pandas  # noqa: F401
    with pytest.raises(ModuleNotFoundError):
        importlib.util.find_spec("pandas.core")


def test_the_finder_refuses_only_its_names_and_is_installed_once() -> None:
    finder = AbsentModules(("no_such_module_here",))
    assert finder.find_spec("json") is None
    with pytest.raises(ModuleNotFoundError):
        finder.find_spec("no_such_module_here.sub")
    before = list(sys.meta_path)
    assert install(("json", "no_such_module_there")) is None  # one is installed already: no second finder
    assert sys.meta_path == before


def test_polars_still_works_without_pandas() -> None:
    # polars probes for pandas with find_spec and catches the ModuleNotFoundError the finder raises.
    frame = pl.DataFrame({"a": [1, 2]})
    assert frame.to_dicts() == [{"a": 1}, {"a": 2}]
    assert duckdb.connect().sql("SELECT 1 AS a").pl().to_dicts() == [{"a": 1}]
