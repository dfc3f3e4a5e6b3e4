"""A sync run in its own process, for the tests (and benchmarks) of the host-wide rate budget.

`python -m oura_assets_tests.rate_budget_worker [--stamps=<file>] <out.json> <run_id> <start> <end>
<patient>...` syncs the patients with `support.budgeted_sync`, taking its settings from the environment as a
run does, and writes what happened to `out.json` (and, with `--stamps`, each request's send time to `<file>`
as it goes, for a run the test stops before it ends).

`python -m oura_assets_tests.rate_budget_worker --acquire=<count>,<limit>,<window_s>,<share> <out.json>` only
takes `count` turns from the configured budget (`RateBudget.from_settings`: SQLite, or PostgreSQL with
OURA_ASSETS_RATE_BUDGET), paced for `limit` per `window_s`, and writes when each turn came.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path

from oura_assets.config import load_settings
from oura_assets_tests.support import budgeted_sync


def acquire(spec: str, out: Path) -> None:
    from oura_assets.oura.rate_budget import RateBudget

    count, limit, window_s, share = spec.split(",")
    settings = load_settings(require=())
    turns: list[float] = []
    with RateBudget.from_settings(
        settings, limit=int(limit), window_s=float(window_s), share=float(share)
    ) as b:
        for _ in range(int(count)):
            b.acquire()
            turns.append(time.time())
    out.write_text(json.dumps({"turns": turns}))


def main(argv: list[str]) -> None:
    if argv and argv[0].startswith("--acquire="):
        acquire(argv[0].removeprefix("--acquire="), Path(argv[1]))
        return
    stamps = None
    if argv and argv[0].startswith("--stamps="):
        stamps = Path(argv.pop(0).removeprefix("--stamps="))
    out, run_id, start, end, *patients = argv
    settings = load_settings(require=("oauth", "tokens"))
    report = budgeted_sync(
        settings, patients, date.fromisoformat(start), date.fromisoformat(end), run_id=run_id, stamps=stamps
    )
    Path(out).write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
