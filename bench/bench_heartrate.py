"""Benchmarks of heart-rate handling: (b) local-day aggregation, (c) the raw bulk write."""

from __future__ import annotations

import gc
import json
import tempfile
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import harness
import polars as pl
from common import WORKER_TIMEOUT_S, day_list, fmt_s, ratio, run_worker, summary, timed, times

from oura_assets import normalize
from oura_assets import warehouse as wh
from oura_assets.oura.client import parse_instant
from oura_assets.sync import heartrate_window
from oura_assets_tests import support

HR_START = datetime(2024, 1, 1, tzinfo=UTC)


def hr_frame(n: int) -> pl.DataFrame:
    """`n` heart-rate samples as read_raw_heartrate returns them, with what makes local days hard.

    Every 5 s over ~58 days; the sleep hours are `rest`, one sample in 200 is repeated at the same instant
    and source with another bpm (keep the lower), and the offset changes twice (-07:00, -08:00, +05:30) with
    days between that have no offset of their own (nearest known day's offset applies).
    """
    distinct = n - n // 200
    start = HR_START
    base = pl.DataFrame(
        {
            "timestamp": pl.datetime_range(
                start,
                start + timedelta(seconds=5 * (distinct - 1)),
                interval="5s",
                time_zone="UTC",
                time_unit="us",
                eager=True,
            ),
            "i": pl.int_range(0, distinct, eager=True),
        }
    ).with_columns(
        bpm=((pl.col("i") * 7919) % 97 + 42).cast(pl.Int64),
        source=pl.when(pl.col("timestamp").dt.hour() < 6).then(pl.lit("rest")).otherwise(pl.lit("awake")),
    )
    repeats = base.gather_every(200).with_columns(bpm=pl.col("bpm") + 3)
    return (
        pl.concat([base, repeats]).sort("timestamp", maintain_order=True).select("timestamp", "bpm", "source")
    )


def hr_offsets(n: int) -> tuple[dict[date, timedelta], list[date]]:
    """The days `hr_frame(n)` covers (and one more) and their UTC offsets."""
    n_days = (n - n // 200) * 5 // 86400 + 2
    days = day_list(HR_START.date(), n_days)
    offsets = {}
    for i, day in enumerate(days):
        if i % 4 == 1:
            continue  # no document that day: the nearest known offset applies
        offsets[day] = timedelta(hours=-7) if i < n_days // 3 else timedelta(hours=-8)
        if i >= 2 * n_days // 3:
            offsets[day] = timedelta(hours=5, minutes=30)
    return offsets, days


def python_day_stats(
    rows: list[tuple[datetime, int, str]], offsets: dict[date, timedelta], days: list[date]
) -> dict[date, normalize.HeartRateDayStats]:
    """The baseline: what `heart_rate_day_stats` does, written as a plain loop with dict grouping."""
    lowest: dict[tuple[datetime, str], int] = {}
    for timestamp, bpm, source in rows:
        if timestamp is None or bpm is None:
            continue
        key = (timestamp, source)
        known = lowest.get(key)
        if known is None or bpm < known:
            lowest[key] = bpm

    def offset_of(day: date) -> timedelta:
        if day in offsets:
            return offsets[day]
        if not offsets:
            return timedelta(0)
        return offsets[min(offsets, key=lambda known: (abs((known - day).days), known))]

    windows = {day: offset_of(day) for day in set(days)}
    acc: dict[date, list] = {}
    one_day = timedelta(days=1)
    for (timestamp, _), bpm in lowest.items():
        utc_day = timestamp.date()
        for day in (utc_day - one_day, utc_day, utc_day + one_day):
            offset = windows.get(day)
            if offset is not None and (timestamp + offset).date() == day:
                a = acc.get(day)
                if a is None:
                    acc[day] = [bpm, bpm, bpm, 1]
                else:
                    a[0] = min(a[0], bpm)
                    a[1] = max(a[1], bpm)
                    a[2] += bpm
                    a[3] += 1
    return {
        day: normalize.HeartRateDayStats(lo, hi, round(total / count, 1), count, windows[day])
        for day, (lo, hi, total, count) in sorted(acc.items())
    }


def _stats_json(stats: dict[date, normalize.HeartRateDayStats]) -> dict[str, list]:
    return {
        day.isoformat(): [s.hr_min, s.hr_max, s.hr_avg, s.hr_samples, s.utc_offset.total_seconds()]
        for day, s in stats.items()
    }


def worker_hr_stats(spec: dict[str, Any]) -> dict[str, Any]:
    """One arm of the aggregation benchmark: peak memory of the first call, then timed repeats.

    The input is read from the Parquet file the parent wrote, so nothing but the input itself was
    allocated before the call: RSS growth during the call is the call's own working memory.
    """
    import tracemalloc

    offsets, days = hr_offsets(spec["n"])
    frame = pl.read_parquet(spec["input"])
    if spec["arm"] == "polars":
        # The production path: the asset hands over read_raw_heartrate's polars frame.
        input_mb = frame.estimated_size() / 2**20

        def call() -> Any:
            return normalize.heart_rate_day_stats(frame, offsets, days)

        repeat = 5
    else:
        # The same samples as Python tuples (aware datetimes), as DuckDB's `fetchall()` would give them.
        # Input size as RSS growth while building it (tracemalloc here would leave its own traces' memory
        # free in the heap for the measured call to reuse, hiding part of that call's peak).
        gc.collect()
        rss_frame = harness.rss_mb()
        rows = frame.rows()
        input_mb = harness.rss_mb() - rss_frame
        del frame

        def call() -> Any:
            return python_day_stats(rows, offsets, days)

        repeat = 3
    gc.collect()
    rss_before = harness.rss_mb()
    peak_reset = harness.reset_peak_rss()
    result = call()
    peak = harness.peak_rss_mb()
    timing, _ = timed(call, repeat)
    # Cross-check: tracemalloc sees every allocation of the pure-Python loop, and almost none of polars'.
    gc.collect()
    tracemalloc.start()
    call()
    traced_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {
        **timing,
        "repeat": repeat,
        "input_mb": input_mb,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "peak_growth_mb": peak - rss_before,
        "peak_reset": peak_reset,
        "tracemalloc_peak_mb": traced_peak_mb,
        "stats": _stats_json(result),
    }


def bench_hr_stats(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    n = size["hr_samples"]
    with tempfile.TemporaryDirectory(prefix="oura-bench-") as tmp:
        data = Path(tmp) / "heartrate.parquet"
        hr_frame(n).write_parquet(data)
        spec = {"kind": "hr_stats", "n": n, "input": str(data)}
        python = run_worker({**spec, "arm": "python"}, {}, Path(tmp), WORKER_TIMEOUT_S)
        polars = run_worker({**spec, "arm": "polars"}, {}, Path(tmp), WORKER_TIMEOUT_S)
    same = python.pop("stats") == polars["stats"]
    stats = polars.pop("stats")
    counted = sum(v[3] for v in stats.values())
    label = f"(b) heart_rate_day_stats, {n:,} samples"
    ratios = {
        "speedup_best": ratio(python["best_s"], polars["best_s"]),
        "speedup_median": ratio(python["median_s"], polars["median_s"]),
        "peak_memory_ratio": ratio(python["peak_growth_mb"], polars["peak_growth_mb"]),
    }
    rows += [
        [label, f"time, best of {python['repeat']} / {polars['repeat']}", fmt_s(python["best_s"]),
         fmt_s(polars["best_s"]), times(ratios["speedup_best"], "faster", "slower")],
        [label, "time, median", fmt_s(python["median_s"]), fmt_s(polars["median_s"]),
         times(ratios["speedup_median"], "faster", "slower")],
        [label, "peak RSS growth during one call", f"{python['peak_growth_mb']:.0f} MiB",
         f"{polars['peak_growth_mb']:.0f} MiB", times(ratios["peak_memory_ratio"], "less", "more")],
        [label, "input held in memory", f"{python['input_mb']:.0f} MiB", f"{polars['input_mb']:.0f} MiB",
         times(ratio(python["input_mb"], polars["input_mb"]), "less", "more")],
        [label, "same result (days, samples counted)", f"{len(stats)} days", f"{counted:,} samples",
         "identical" if same else "DIFFERENT"],
    ]  # fmt: skip
    return {
        "what": "normalize.heart_rate_day_stats (polars frame) vs a pure-Python dict-grouping loop (tuples)",
        "params": {"samples": n, "days": len(stats)},
        "baseline": {"name": "pure Python (dict grouping)", **python},
        "candidate": {"name": "polars (normalize.heart_rate_day_stats)", **polars},
        "ratios": ratios,
        "ok": same and counted > 0,
        "check": "both give the same HeartRateDayStats for every day",
    }


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
