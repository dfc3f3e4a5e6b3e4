"""Benchmarks of heart-rate handling: the raw bulk write (local-day aggregation is in bench_loading.py)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from common import fmt_s, ratio, summary, timed, times

from oura_assets import warehouse as wh
from oura_assets.oura.client import parse_instant
from oura_assets.sync import heartrate_window
from oura_assets_tests import support

HR_START = datetime(2024, 1, 1, tzinfo=UTC)


# --- (c) raw heart-rate bulk write -------------------------------------------------------------------------


def hr_samples(n: int, start: datetime) -> list[dict[str, Any]]:
    """`n` distinct Oura heart-rate rows as the client returns them (both timestamp spellings Oura uses)."""
    out = []
    for i in range(n):
        moment = start + timedelta(seconds=5 * i)
        stamp = moment.isoformat() if i % 3 else moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        out.append(
            {
                "bpm": 42 + (i * 7919) % 97,
                "source": "rest" if moment.hour < 6 else "awake",
                "timestamp": stamp,
            }
        )
    return out


def executemany_replace(
    conn: Any, patient_id: str, start: datetime, end: datetime, samples: list[dict], fetched_at: datetime
) -> int:
    """The baseline: delete the patient's window, then insert the samples row by row with executemany."""
    conn.execute(
        "DELETE FROM oura_raw.heartrate WHERE patient_id = ? AND timestamp >= ? AND timestamp < ?",
        [patient_id, start, end],
    )
    params = [
        (patient_id, parse_instant(s["timestamp"]), s["source"], s["bpm"], json.dumps(s), fetched_at)
        for s in samples
    ]
    conn.executemany(
        "INSERT INTO oura_raw.heartrate (patient_id, timestamp, source, bpm, document, fetched_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        params,
    )
    return len(params)


def _heartrate_table(path: Path) -> list[tuple]:
    """The written table, with the JSON document parsed (the two writers may space JSON differently)."""
    return [(*row[:-1], json.loads(row[-1])) for row in support.table_rows(path, "oura_raw.heartrate")]


def bench_hr_write(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    n = size["write_samples"]
    patient = "bench-patient"
    first_day = date(2024, 6, 1)
    low, high = heartrate_window(first_day, first_day + timedelta(days=n * 5 // 86400))
    samples = hr_samples(n, low)
    fetched_at = datetime(2024, 7, 1, tzinfo=UTC)
    arms = {
        "bulk": (wh.replace_raw_heartrate, 3),
        # ~0.3 ms per row: one pass of each at full size takes long enough to be stable, and two would not
        # fit the run's time budget.
        "executemany": (executemany_replace, 1),
    }
    results: dict[str, dict[str, Any]] = {}
    tables: dict[str, list[tuple]] = {}
    with tempfile.TemporaryDirectory(prefix="oura-bench-") as tmp:
        for arm, (write, repeat) in arms.items():
            first: list[float] = []
            for attempt in range(repeat):
                store = wh.Warehouse(Path(tmp) / f"{arm}-{attempt}.duckdb")
                store.ensure_schema()

                def call(store: wh.Warehouse = store, write: Callable = write) -> int:
                    with store.transaction("bench: heart-rate write") as conn:
                        return write(conn, patient, low, high, samples, fetched_at)

                timing, written = timed(call, 1)
                first.append(timing["best_s"])
                if written != n:
                    raise AssertionError(f"{arm} wrote {written} of {n} samples")
            rewrite, written = timed(call, repeat)  # rewrite: same window, same samples, table populated
            if written != n:
                raise AssertionError(f"{arm} rewrote {written} of {n} samples")
            results[arm] = {"first_write": summary(first), "rewrite": rewrite, "repeat": repeat}
            tables[arm] = _heartrate_table(store.path)
    same = tables["bulk"] == tables["executemany"] and len(tables["bulk"]) == n
    bulk, naive = results["bulk"], results["executemany"]
    label = f"(c) raw heart-rate write, {n:,} samples"
    ratios = {
        "first_write_speedup": ratio(naive["first_write"]["best_s"], bulk["first_write"]["best_s"]),
        "rewrite_speedup": ratio(naive["rewrite"]["best_s"], bulk["rewrite"]["best_s"]),
    }
    rows += [
        [label, "first write (empty table)", fmt_s(naive["first_write"]["best_s"]),
         fmt_s(bulk["first_write"]["best_s"]), times(ratios["first_write_speedup"], "faster", "slower", 0)],
        [label, "rewrite (same window again)", fmt_s(naive["rewrite"]["best_s"]),
         fmt_s(bulk["rewrite"]["best_s"]), times(ratios["rewrite_speedup"], "faster", "slower", 0)],
        [label, "rows per second (first write)", f"{n / naive['first_write']['best_s']:,.0f}",
         f"{n / bulk['first_write']['best_s']:,.0f}", "identical table" if same else "DIFFERENT"],
    ]  # fmt: skip
    return {
        "what": "warehouse.replace_raw_heartrate (JSON-chunk staging) vs executemany row inserts, same table",
        "params": {"samples": n},
        "baseline": {"name": "DELETE window + executemany INSERT", **naive},
        "candidate": {"name": "warehouse.replace_raw_heartrate", **bulk},
        "ratios": ratios,
        "ok": same,
        "check": "both leave the same oura_raw.heartrate rows (minus fetched_at, JSON compared parsed)",
    }
