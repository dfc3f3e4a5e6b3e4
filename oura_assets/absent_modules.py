"""Answer "not installed" at once for pandas, which DuckDB's Python client looks for on every bound parameter.

DuckDB 1.5's Python client, converting each bound parameter (an int, a string, a timestamp), asks whether
it is a pandas NA/NaT by importing `pandas`. pandas is not one of our dependencies, and Python does not
remember a failed import: each attempt walks every finder on `sys.meta_path` and every `sys.path` entry
again, about 60 µs, twice per parameter. Measured on this project's venv: a 3-parameter `execute` took
680 µs with those lookups and 320 µs without, and a nightly sync's landing (about 170 statements per
patient) spent more CPU in failed imports of pandas than in DuckDB itself.

`install()` puts a finder first on `sys.meta_path` that refuses `pandas` (and its submodules) with the
same `ModuleNotFoundError` the normal search would end in, only when pandas is not installed, checked once.
`importlib.util.find_spec("pandas")` then raises `ModuleNotFoundError` instead of returning None; libraries
that probe for pandas that way (polars' lazy imports) catch exactly that. Nothing changes when pandas is
installed.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

ABSENT = ("pandas",)


class AbsentModules(importlib.abc.MetaPathFinder):
    """Refuses `names` (and their submodules) at once: they were looked for once and are not installed."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def install(names: tuple[str, ...] = ABSENT) -> AbsentModules | None:
    """Put the finder first on `sys.meta_path` for those of `names` that are not installed (once)."""
    if any(isinstance(finder, AbsentModules) for finder in sys.meta_path):
        return None
    absent = tuple(n for n in names if n not in sys.modules and importlib.util.find_spec(n) is None)
    if not absent:
        return None
    finder = AbsentModules(absent)
    sys.meta_path.insert(0, finder)
    return finder
