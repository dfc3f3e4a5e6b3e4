"""oura_assets benchmarks: each one against a baseline measured in the same run, quoted as ratios.

    make bench                          # everything, full size (a few minutes on 2 cores)
    .venv/bin/python bench/run.py --quick
    .venv/bin/python bench/run.py --only backfill [--only faults ...]

Writes bench/results/latest.json and prints a Markdown table. See bench/README.md for what each benchmark
measures, why, and how to read the numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import harness
import polars as pl
from bench_ducklake import bench_ducklake
from bench_shards import bench_shards

from oura_assets import normalize
from oura_assets import warehouse as wh
from oura_assets.oura.client import parse_instant
from oura_assets.sync import heartrate_window
from oura_assets_tests import support

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

# Thirty days in the middle of 2024: long settled on the simulator's frozen data clock (harness.DATA_NOW).
BACKFILL_START = date(2024, 6, 1)
BACKFILL_DAYS = 30

SIZES = {
    "full": {
        "patients": 5,
        "hr_samples": 1_000_000,
        "write_samples": 150_000,
        "fault_repeats": 3,
        "nightly_patients": 16,
        "encryption_repeats": 3,
    },
    "quick": {
        "patients": 2,
        "hr_samples": 200_000,
        "write_samples": 30_000,
        "fault_repeats": 1,
        "nightly_patients": 6,
        "encryption_repeats": 1,
    },
}
HR_START = datetime(2024, 1, 1, tzinfo=UTC)
FAULTS = {"error_rate": 0.1, "drop_rate": 0.05, "latency_ms": 20}
# A nightly run: yesterday plus the default 3-day lookback; Oura's latency stood in for by the simulator's.
NIGHTLY_DAYS = 4
NIGHTLY_LATENCY = {"latency_ms": 40}

WORKER_TIMEOUT_S = 480
# (f) encryption: any key of the required length will do; it lives only in the benchmark's children.
BENCH_WAREHOUSE_KEY = "bench-warehouse-key-0123456789abcdef"


# --- helpers -----------------------------------------------------------------------------------------------


def _days(start: date, n: int) -> list[date]:
    return [start + timedelta(days=i) for i in range(n)]


def _summary(samples: list[float]) -> dict[str, Any]:
    return {"best_s": min(samples), "median_s": statistics.median(samples), "runs_s": samples}


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[dict[str, Any], Any]:
    samples, result = [], None
    for _ in range(repeat):
        gc.collect()
        began = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - began)
    return _summary(samples), result


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _ratio(baseline: float, candidate: float) -> float:
    return baseline / candidate if candidate else float("inf")


def _times(ratio: float, better: str, worse: str, digits: int = 1) -> str:
    """`ratio` is baseline / candidate: "4.1x faster" above 1, "1.6x more" (inverted) below."""
    return f"{ratio:.{digits}f}x {better}" if ratio >= 1 else f"{1 / ratio:.{digits}f}x {worse}"


def _mib(arm: dict[str, Any]) -> str:
    return f"{arm['peak_rss_mb']:.0f} MiB (+{arm['peak_rss_mb'] - arm['rss_before_mb']:.0f})"


def _worker(spec: dict[str, Any], env: dict[str, str], cwd: Path, timeout_s: float) -> dict[str, Any]:
    """Run one measured arm in a fresh interpreter so its peak RSS is its own; return its JSON answer."""
    log = cwd / f"worker-{spec['kind']}-{spec.get('mode', spec.get('arm', ''))}.log"
    with log.open("w") as stderr:
        answer = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
            env=harness.child_environ(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    if answer.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"worker {spec} exited {answer.returncode}:\n{tail}")
    return json.loads(answer.stdout.strip().splitlines()[-1])


# --- workers (run in a child process) ----------------------------------------------------------------------


def _worker_materialize(spec: dict[str, Any]) -> dict[str, Any]:
    """Materialize the job over [start, end] as one ranged run, or as one run per daily partition."""
    import logging

    import dagster as dg

    from oura_assets.definitions import defs as load_defs

    logging.getLogger("httpx").setLevel(logging.WARNING)
    start, end = date.fromisoformat(spec["start"]), date.fromisoformat(spec["end"])
    definitions = load_defs()
    definitions.resolve_job_def(support.SYNC_JOB)
    instance = dg.DagsterInstance.ephemeral()
    if spec["mode"] == "ranged":
        # What BackfillPolicy.single_run() launches for a range: one run tagged with the range.
        runs: list[tuple[date, date | None]] = [(start, end)]
    else:
        # What a per-partition backfill launches: one run per daily partition.
        runs = [(day, None) for day in _days(start, (end - start).days + 1)]
    run_config = {"resources": {"oura": {"config": {"max_concurrent_patients": spec.get("workers", 4)}}}}
    gc.collect()
    rss_before = harness.rss_mb()
    peak_reset = harness.reset_peak_rss()
    began = time.perf_counter()
    for first, last in runs:
        result = support.run_sync(
            first, last, definitions=definitions, instance=instance, run_config=run_config
        )
        if not result.success:
            raise RuntimeError(f"run {first}..{last or first} failed: {support.failures(result)[:3]}")
    elapsed = time.perf_counter() - began
    return {
        "wall_s": elapsed,
        "runs": len(runs),
        "rss_before_mb": rss_before,
        "peak_rss_mb": harness.peak_rss_mb(),
        "peak_reset": peak_reset,
    }


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
    days = _days(HR_START.date(), n_days)
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


def _worker_hr_stats(spec: dict[str, Any]) -> dict[str, Any]:
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
    timing, _ = _timed(call, repeat)
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


WORKERS = {"materialize": _worker_materialize, "hr_stats": _worker_hr_stats}


# --- (a) ranged backfill vs day-at-a-time ------------------------------------------------------------------


def _materialize_arm(
    mode: str,
    patients: list[str],
    start: date,
    end: date,
    faults: dict[str, Any] | None = None,
    seed: int = 0,
    workers: int = 4,
    warehouse_key: str | None = None,
) -> dict[str, Any]:
    """A fresh simulator and warehouse, `patients` connected, then the job materialized in a child process.

    With `warehouse_key` the warehouse is encrypted (OURA_ASSETS_WAREHOUSE_KEY).
    """
    with tempfile.TemporaryDirectory(prefix="oura-bench-") as tmp:
        workdir = Path(tmp)
        warehouse = workdir / "warehouse.duckdb"
        server = harness.start_simulator(seed)
        try:
            env = harness.pipeline_env(server.url, warehouse)
            if warehouse_key is not None:
                env["OURA_ASSETS_WAREHOUSE_KEY"] = warehouse_key
            with harness.applied_env(env) as settings:
                for patient_id in patients:
                    support.connect_patient(settings, patient_id)
            if faults:
                server.control.set_faults(**faults)
            server.control.reset_stats()
            measured = _worker(
                {
                    "kind": "materialize",
                    "mode": mode,
                    "start": start.isoformat(),
                    "end": end.isoformat(),
                    "workers": workers,
                },
                env,
                workdir,
                WORKER_TIMEOUT_S,
            )
            stats = server.control.stats()
        finally:
            server.stop()
        with wh.Warehouse(warehouse, key=warehouse_key).connect("bench: snapshot") as conn:
            conn.execute("CHECKPOINT")
            snapshot = support.snapshot(conn)
        return {
            **measured,
            "http_requests": stats["total_requests"],
            "injected_errors": stats["injected_errors"],
            "dropped": stats["dropped"],
            "requests_by_route": {route: sum(c.values()) for route, c in stats["requests"].items()},
            "snapshot": snapshot,
            "file_mb": warehouse.stat().st_size / 2**20,
            "first_patient_id_in_file": patients[0].encode() in warehouse.read_bytes(),
        }


def _compare(baseline: dict, candidate: dict) -> dict[str, dict[str, Any]]:
    return {
        table: {
            "identical": rows == candidate[table],
            "rows": len(rows),
            "candidate_rows": len(candidate[table]),
        }
        for table, rows in baseline.items()
    }


def _arm_ratios_and_rows(
    label: str, baseline: dict, candidate: dict
) -> tuple[dict[str, float], list[list[str]]]:
    """Wall time, requests served and peak RSS of two materialization arms, as ratios and table rows."""
    ratios = {
        "wall_time_speedup": _ratio(baseline["wall_s"], candidate["wall_s"]),
        "http_requests_ratio": _ratio(baseline["http_requests"], candidate["http_requests"]),
        "peak_rss_ratio": _ratio(baseline["peak_rss_mb"], candidate["peak_rss_mb"]),
    }
    rss = "peak RSS of the run process (growth during runs)"
    rows = [
        [label, "wall time", _fmt_s(baseline["wall_s"]), _fmt_s(candidate["wall_s"]),
         _times(ratios["wall_time_speedup"], "faster", "slower")],
        [label, "HTTP requests served", str(baseline["http_requests"]), str(candidate["http_requests"]),
         _times(ratios["http_requests_ratio"], "fewer", "more")],
        [label, rss, _mib(baseline), _mib(candidate), _times(ratios["peak_rss_ratio"], "less", "more", 2)],
    ]  # fmt: skip
    return ratios, rows


def bench_backfill(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    patients = [f"bench-patient-{n}" for n in range(size["patients"])]
    start, end = BACKFILL_START, BACKFILL_START + timedelta(days=BACKFILL_DAYS - 1)
    daily = _materialize_arm("daily", patients, start, end)
    ranged = _materialize_arm("ranged", patients, start, end)
    tables = _compare(daily.pop("snapshot"), ranged.pop("snapshot"))
    wearable = tables["patient_graph.wearable_data"]
    label = f"(a) backfill {len(patients)} patients x {BACKFILL_DAYS} d"
    ratios, arm_rows = _arm_ratios_and_rows(label, daily, ranged)
    rows += [
        *arm_rows,
        [label, "wearable_data rows (identical?)", str(wearable["rows"]), str(wearable["candidate_rows"]),
         "identical" if wearable["identical"] else "DIFFERENT"],
    ]  # fmt: skip
    return {
        "what": "30 one-day runs (per-partition backfill) vs one ranged run (BackfillPolicy.single_run())",
        "params": {"patients": len(patients), "days": BACKFILL_DAYS, "start": start.isoformat()},
        "baseline": {"name": "30 one-day runs", **daily},
        "candidate": {"name": "one ranged run", **ranged},
        "ratios": ratios,
        "tables_identical": tables,
        "ok": wearable["identical"] and wearable["rows"] > 0,
        "check": "patient_graph.wearable_data identical (minus synced_at) in both arms",
    }


# --- (b) local-day heart-rate aggregation ------------------------------------------------------------------


def bench_hr_stats(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    n = size["hr_samples"]
    with tempfile.TemporaryDirectory(prefix="oura-bench-") as tmp:
        data = Path(tmp) / "heartrate.parquet"
        hr_frame(n).write_parquet(data)
        spec = {"kind": "hr_stats", "n": n, "input": str(data)}
        python = _worker({**spec, "arm": "python"}, {}, Path(tmp), WORKER_TIMEOUT_S)
        polars = _worker({**spec, "arm": "polars"}, {}, Path(tmp), WORKER_TIMEOUT_S)
    same = python.pop("stats") == polars["stats"]
    stats = polars.pop("stats")
    counted = sum(v[3] for v in stats.values())
    label = f"(b) heart_rate_day_stats, {n:,} samples"
    ratios = {
        "speedup_best": _ratio(python["best_s"], polars["best_s"]),
        "speedup_median": _ratio(python["median_s"], polars["median_s"]),
        "peak_memory_ratio": _ratio(python["peak_growth_mb"], polars["peak_growth_mb"]),
    }
    rows += [
        [label, f"time, best of {python['repeat']} / {polars['repeat']}", _fmt_s(python["best_s"]),
         _fmt_s(polars["best_s"]), _times(ratios["speedup_best"], "faster", "slower")],
        [label, "time, median", _fmt_s(python["median_s"]), _fmt_s(polars["median_s"]),
         _times(ratios["speedup_median"], "faster", "slower")],
        [label, "peak RSS growth during one call", f"{python['peak_growth_mb']:.0f} MiB",
         f"{polars['peak_growth_mb']:.0f} MiB", _times(ratios["peak_memory_ratio"], "less", "more")],
        [label, "input held in memory", f"{python['input_mb']:.0f} MiB", f"{polars['input_mb']:.0f} MiB",
         _times(_ratio(python["input_mb"], polars["input_mb"]), "less", "more")],
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

                timing, written = _timed(call, 1)
                first.append(timing["best_s"])
                if written != n:
                    raise AssertionError(f"{arm} wrote {written} of {n} samples")
            rewrite, written = _timed(call, repeat)  # rewrite: same window, same samples, table populated
            if written != n:
                raise AssertionError(f"{arm} rewrote {written} of {n} samples")
            results[arm] = {"first_write": _summary(first), "rewrite": rewrite, "repeat": repeat}
            tables[arm] = _heartrate_table(store.path)
    same = tables["bulk"] == tables["executemany"] and len(tables["bulk"]) == n
    bulk, naive = results["bulk"], results["executemany"]
    label = f"(c) raw heart-rate write, {n:,} samples"
    ratios = {
        "first_write_speedup": _ratio(naive["first_write"]["best_s"], bulk["first_write"]["best_s"]),
        "rewrite_speedup": _ratio(naive["rewrite"]["best_s"], bulk["rewrite"]["best_s"]),
    }
    rows += [
        [label, "first write (empty table)", _fmt_s(naive["first_write"]["best_s"]),
         _fmt_s(bulk["first_write"]["best_s"]), _times(ratios["first_write_speedup"], "faster", "slower", 0)],
        [label, "rewrite (same window again)", _fmt_s(naive["rewrite"]["best_s"]),
         _fmt_s(bulk["rewrite"]["best_s"]), _times(ratios["rewrite_speedup"], "faster", "slower", 0)],
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


# --- (d) sync under faults ---------------------------------------------------------------------------------


def bench_faults(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    patients = ["bench-patient-faults"]
    start, end = BACKFILL_START, BACKFILL_START + timedelta(days=BACKFILL_DAYS - 1)
    clean_runs: list[dict[str, Any]] = []
    faulty_runs: list[dict[str, Any]] = []
    tables: dict[str, dict[str, Any]] = {}
    reference: dict[str, list[tuple]] | None = None
    for seed in range(size["fault_repeats"]):
        # Clean and faulty alternate; each repeat rolls the fault dice with another seed.
        clean_runs.append(_materialize_arm("ranged", patients, start, end))
        faulty_runs.append(_materialize_arm("ranged", patients, start, end, faults=FAULTS, seed=seed))
        snapshots = [clean_runs[-1].pop("snapshot"), faulty_runs[-1].pop("snapshot")]
        reference = reference or snapshots[0]
        for snapshot in snapshots:
            for table, compared in _compare(reference, snapshot).items():
                if tables.get(table, {"identical": True})["identical"]:  # keep the first difference
                    tables[table] = compared
    identical = all(t["identical"] for t in tables.values())
    landed = sum(t["rows"] for t in tables.values())
    clean = {"wall_s": statistics.median(r["wall_s"] for r in clean_runs), "runs": clean_runs}
    faulty = {"wall_s": statistics.median(r["wall_s"] for r in faulty_runs), "runs": faulty_runs}
    for arm, runs in ((clean, clean_runs), (faulty, faulty_runs)):
        for key in ("http_requests", "injected_errors", "dropped"):
            arm[key] = sum(r[key] for r in runs)
    n = len(clean_runs)
    label = f"(d) 1 patient x {BACKFILL_DAYS} d under faults"
    overhead = _ratio(faulty["wall_s"], clean["wall_s"])
    extra = faulty["wall_s"] - clean["wall_s"]
    rows += [
        [label, f"wall time (median of {n})", _fmt_s(clean["wall_s"]), _fmt_s(faulty["wall_s"]),
         f"{overhead:.1f}x the time (+{extra:.1f} s)"],
        [label, f"HTTP requests, {n} run(s) (5xx / drops)", str(clean["http_requests"]),
         f"{faulty['http_requests']} ({faulty['injected_errors']} / {faulty['dropped']})",
         f"{_ratio(faulty['http_requests'], clean['http_requests']):.2f}x"],
        [label, "rows landed, 7 tables (identical?)", f"{landed:,}", f"{landed:,}",
         "identical" if identical else "DIFFERENT"],
    ]  # fmt: skip
    return {
        "what": f"one ranged run, clean simulator vs faults {FAULTS}",
        "params": {"patients": 1, "days": BACKFILL_DAYS, "faults": FAULTS, "repeats": n},
        "baseline": {"name": "clean", **clean},
        "candidate": {"name": "faults", **faulty},
        "ratios": {"time_overhead": overhead, "extra_seconds": extra},
        "tables_identical": tables,
        "ok": identical and landed > 0 and faulty["injected_errors"] + faulty["dropped"] > 0,
        "check": "every run's raw and patient-graph tables equal the first clean run's (minus volatile cols)",
    }


def bench_nightly(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    """(e) A nightly run for many patients: one patient at a time vs `max_concurrent_patients=4`."""
    patients = [f"bench-patient-{n}" for n in range(size["nightly_patients"])]
    start, end = BACKFILL_START, BACKFILL_START + timedelta(days=NIGHTLY_DAYS - 1)
    serial = _materialize_arm("ranged", patients, start, end, faults=NIGHTLY_LATENCY, workers=1)
    pooled = _materialize_arm("ranged", patients, start, end, faults=NIGHTLY_LATENCY, workers=4)
    tables = _compare(serial.pop("snapshot"), pooled.pop("snapshot"))
    identical = all(t["identical"] for t in tables.values())
    label = f"(e) nightly {len(patients)} patients x {NIGHTLY_DAYS} d, 40 ms latency"
    ratios, arm_rows = _arm_ratios_and_rows(label, serial, pooled)
    rows += [*arm_rows, [label, "all 7 tables identical?", "", "", "identical" if identical else "DIFFERENT"]]
    return {
        "what": "one ranged run per arm: patients fetched one at a time vs four at a time",
        "params": {"patients": len(patients), "days": NIGHTLY_DAYS, "faults": NIGHTLY_LATENCY},
        "baseline": {"name": "max_concurrent_patients=1", **serial},
        "candidate": {"name": "max_concurrent_patients=4", **pooled},
        "ratios": ratios,
        "tables_identical": tables,
        "ok": identical,
        "check": "every table identical (minus synced_at/updated_at/fetched_at) in both arms",
    }


# --- (f) the nightly run into an encrypted warehouse vs a plain one ----------------------------------------


def bench_encryption(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    """(f) The same nightly run (no injected latency, so the warehouse's share of the time is as large as it
    gets) into a plain warehouse and into an encrypted one, alternating arms; best of the repeats each."""
    patients = [f"bench-patient-{n}" for n in range(size["nightly_patients"])]
    start, end = BACKFILL_START, BACKFILL_START + timedelta(days=NIGHTLY_DAYS - 1)
    plain_runs, encrypted_runs = [], []
    for _ in range(size["encryption_repeats"]):
        plain_runs.append(_materialize_arm("ranged", patients, start, end))
        encrypted_runs.append(
            _materialize_arm("ranged", patients, start, end, warehouse_key=BENCH_WAREHOUSE_KEY)
        )
    plain = min(plain_runs, key=lambda arm: arm["wall_s"])
    encrypted = min(encrypted_runs, key=lambda arm: arm["wall_s"])
    tables = _compare(plain["snapshot"], encrypted["snapshot"])
    identical = all(t["identical"] for t in tables.values()) and all(
        _compare(plain["snapshot"], arm["snapshot"]) == tables for arm in plain_runs + encrypted_runs
    )
    for arm in plain_runs + encrypted_runs:
        arm.pop("snapshot")
    overhead = encrypted["wall_s"] / plain["wall_s"] if plain["wall_s"] else float("nan")
    label = f"(f) nightly {len(patients)} patients x {NIGHTLY_DAYS} d, encrypted"
    walls = {name: [round(a["wall_s"], 2) for a in arms] for name, arms in
             (("plain", plain_runs), ("encrypted", encrypted_runs))}  # fmt: skip
    rows += [
        [label, "wall time (best of runs)", _fmt_s(plain["wall_s"]), _fmt_s(encrypted["wall_s"]),
         f"{overhead:.2f}x the plain run's time"],
        [label, "warehouse file", f"{plain['file_mb']:.1f} MiB", f"{encrypted['file_mb']:.1f} MiB", ""],
        [label, "a patient id readable in the file?", str(plain["first_patient_id_in_file"]),
         str(encrypted["first_patient_id_in_file"]), ""],
        [label, "all tables identical?", "", "", "identical" if identical else "DIFFERENT"],
    ]  # fmt: skip
    return {
        "what": "one ranged nightly run per arm: plain warehouse vs encrypted (OURA_ASSETS_WAREHOUSE_KEY)",
        "params": {"patients": len(patients), "days": NIGHTLY_DAYS, "repeats": size["encryption_repeats"]},
        "baseline": {"name": "plain warehouse", **plain},
        "candidate": {"name": "encrypted warehouse", **encrypted},
        "wall_s_per_run": walls,
        "ratios": {"encrypted_over_plain_wall_time": overhead},
        "tables_identical": tables,
        "ok": identical and not encrypted["first_patient_id_in_file"] and plain["first_patient_id_in_file"],
        "check": "every table identical in all runs; a patient id readable in the plain file only",
    }


BENCHMARKS: dict[str, Callable[[dict[str, Any], list[list[str]]], dict[str, Any]]] = {
    "backfill": bench_backfill,
    "hr_stats": bench_hr_stats,
    "hr_write": bench_hr_write,
    "faults": bench_faults,
    "nightly": bench_nightly,
    "encryption": bench_encryption,
    "ducklake": bench_ducklake,
    "shards": bench_shards,
}


# --- main --------------------------------------------------------------------------------------------------


def markdown_table(rows: list[list[str]]) -> str:
    header = ["benchmark", "metric", "baseline", "candidate", "ratio"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"
        for row in [header, ["-" * w for w in widths], *rows]
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (2 patients, 200k/30k samples)")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json", help="results JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec["kind"]](spec)))
        return 0

    size_name = "quick" if args.quick else "full"
    size = SIZES[size_name]
    names = args.only or list(BENCHMARKS)
    machine = harness.machine_info()
    print(
        f"oura_assets benchmarks ({size_name}): {machine['nproc']} CPUs ({machine['cpu']}), "
        f"Python {machine['python']}, duckdb {machine['duckdb']}, polars {machine['polars']}, "
        f"dagster {machine['dagster']}",
        flush=True,
    )
    results: dict[str, Any] = {}
    rows: list[list[str]] = []
    began = time.perf_counter()
    for name in names:
        print(f"running {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            results[name] = BENCHMARKS[name](size, rows)
        except Exception as exc:
            traceback.print_exc()
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            rows.append([name, "ERROR", "-", "-", type(exc).__name__])
        results[name]["elapsed_s"] = time.perf_counter() - t0
        print(f"  {name}: {'ok' if results[name]['ok'] else 'FAILED'} in {results[name]['elapsed_s']:.0f} s")

    table = markdown_table(rows)
    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "size": size_name,
        "sizes": size,
        "machine": machine,
        "total_s": time.perf_counter() - began,
        "benchmarks": results,
        "table_markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print()
    print(table)
    print(f"\nresults: {args.out} ({report['total_s']:.0f} s in all)")
    failed = [name for name, r in results.items() if not r["ok"]]
    if failed:
        print(f"FAILED checks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
