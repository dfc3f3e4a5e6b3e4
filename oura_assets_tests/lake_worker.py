"""Writers and a reader of one DuckLake in their own processes, for the concurrency tests of the lake.

`python -m oura_assets_tests.lake_worker write <catalog> <data_path> <worker> <transactions> <out.json>`
replaces windows of `wearable_data` and records events in `transactions` transactions through
`Warehouse.attempts` (every transaction also rewrites the window of one patient all writers share, and
records an event whose id all writers use, so they really collide); `read <catalog> <data_path> <stop_file>
<out.json>` attaches the lake READ_ONLY in a plain DuckDB and counts rows until `stop_file` appears.
Each writes what it saw to `out.json`.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

from oura_assets import warehouse as wh

DAYS = 5
START = date(2024, 6, 1)


def _rows(patient: str, value: int) -> list[dict]:
    return [
        {
            "patient_id": patient,
            "source": "oura",
            "metric_type": "readiness",
            "day": START + timedelta(days=d),
            "metrics": {"score": value},
        }
        for d in range(DAYS)
    ]


def write(catalog: str, data_path: str, worker: str, transactions: int, out: Path) -> None:
    store = wh.Warehouse(wh.lake_location(catalog, data_path))
    tries = 0
    for n in range(transactions):
        for attempt in store.attempts(f"worker {worker}: transaction {n}"):
            with attempt as conn:
                tries += 1
                now = datetime.now(UTC)
                end = START + timedelta(days=DAYS - 1)
                wh.replace_wearable_data(
                    conn, f"patient-{worker}", START, end, _rows(f"patient-{worker}", n), now
                )
                wh.replace_wearable_data(conn, "shared", START, end, _rows("shared", n), now)
                wh.record_event(
                    conn,
                    patient_id="shared",
                    event_type="wearable_sync",
                    payload={"worker": worker, "n": n},
                    event_id=f"shared-event-{n}",
                )
    out.write_text(json.dumps({"transactions": transactions, "tries": tries}))


def read(catalog: str, data_path: str, stop: Path, out: Path) -> None:
    conn = duckdb.connect()
    wh.attach_lake(conn, wh.lake_location(catalog, data_path), "analyst", read_only=True)
    reads, errors, max_rows_per_key = 0, [], 0
    while not stop.exists():
        try:
            (extra,) = conn.execute(
                "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n "
                "FROM analyst.patient_graph.wearable_data GROUP BY patient_id, source, metric_type, day)"
            ).fetchone()
            max_rows_per_key = max(max_rows_per_key, int(extra))
            reads += 1
        except duckdb.Error as exc:  # recorded, not raised: the test asserts there were none
            errors.append(str(exc).splitlines()[0])
        time.sleep(0.01)
    out.write_text(json.dumps({"reads": reads, "errors": errors, "max_rows_per_key": max_rows_per_key}))


def main(argv: list[str]) -> None:
    command, catalog, data_path, *rest = argv
    if command == "write":
        worker, transactions, out = rest
        write(catalog, data_path, worker, int(transactions), Path(out))
    else:
        stop, out = rest
        read(catalog, data_path, Path(stop), Path(out))


if __name__ == "__main__":
    main(sys.argv[1:])
