"""Benchmarks of local work on heart rate (issue 10): local-day statistics (loading: `bench_hrload.py`).

    .venv/bin/python bench/run.py --only loading --only hr_stats [--quick]

`hr_stats`: `normalize.heart_rate_day_stats` against a plain Python loop (memory, the issue's measure) and
against its previous three-copy form (speed), same input. `loading` (heart rate from fetched pages to
committed rows) lives in `bench_hrload.py` and is registered here with the others.

Every measured arm runs in a fresh child process (this file run with `--worker`), so its peak RSS and CPU time
are its own. CPU time (`time.process_time`, all the child's threads) is quoted beside wall time: the machine
these were written on is shared, and CPU time moves far less with the load than wall time does.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import harness
import polars as pl
from bench_hrload import bench_loading
from bench_incremental import bench_incremental

from oura_assets import normalize

HR_START = datetime(2024, 1, 1, tzinfo=UTC)
SIZES = {"full": {"hr_samples": 1_000_000}, "quick": {"hr_samples": 1_000_000}}
WORKER_TIMEOUT_S = 900


def _size(size: dict[str, Any]) -> dict[str, Any]:
    """This module's sizes for the run: run.py passes its own size dict, in which `patients` tells quick."""
    return SIZES["quick" if size.get("patients", 5) <= 2 else "full"]


def _child(spec: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """Run one arm in a fresh interpreter (this file with `--worker`); return its JSON answer."""
    log = cwd / f"worker-{spec['kind']}-{spec.get('arm', '')}.log"
    with log.open("w") as stderr:
        answer = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
            env=harness.child_environ({}),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=WORKER_TIMEOUT_S,
            check=False,
        )
    if answer.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"worker {spec['kind']}/{spec.get('arm')} exited {answer.returncode}:\n{tail}")
    return json.loads(answer.stdout.strip().splitlines()[-1])


# --- hr_stats -----------------------------------------------------------------------------------------------


def hr_frame(n: int) -> pl.DataFrame:
    """`n` heart-rate samples as read_raw_heartrate returns them, with what makes local days hard.

    Every 5 s over ~58 days (1M samples); the sleep hours are `rest`, one sample in 200 is repeated at the
    same instant and source with another bpm (keep the lower), and the offset changes twice (-07:00, -08:00,
    +05:30) with days between that have no offset of their own (nearest known day's offset applies).
    """
    distinct = n - n // 200
    base = pl.DataFrame(
        {
            "timestamp": pl.datetime_range(
                HR_START,
                HR_START + timedelta(seconds=5 * (distinct - 1)),
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
    days = [HR_START.date() + timedelta(days=i) for i in range(n_days)]
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
    """The plain-loop baseline: a dict keeps the lowest bpm per (instant, source), then each sample is tried
    against its UTC day and the days either side, grouped in a dict."""
    lowest: dict[tuple[datetime, str], int] = {}
    for timestamp, bpm, source in rows:
        if timestamp is None or bpm is None:
            continue
        key = (timestamp, source)
        known = lowest.get(key)
        if known is None or bpm < known:
            lowest[key] = bpm
    windows = {day: normalize.offset_for(day, offsets) for day in set(days)}
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
        day: normalize.HeartRateDayStats(lo, hi, total / count, count, windows[day])
        for day, (lo, hi, total, count) in sorted(acc.items())
    }


def three_copies_day_stats(
    frame: pl.DataFrame, offsets: dict[date, timedelta], days: list[date]
) -> dict[date, normalize.HeartRateDayStats]:
    """`heart_rate_day_stats` as it was before this benchmark (kept here as the speed baseline): the frame
    concatenated three times (UTC day -1, 0, +1), joined with the days' offsets, filtered, grouped."""
    from oura_assets.normalize.heart_rate import _heart_rate_frame

    windows = [(day, normalize.offset_for(day, offsets)) for day in sorted(set(days))]
    frame = _heart_rate_frame(frame)
    window_frame = pl.DataFrame(
        {"day": [d for d, _ in windows], "offset_s": [int(o.total_seconds()) for _, o in windows]},
        schema={"day": pl.Date, "offset_s": pl.Int64},
    )
    utc_date = pl.col("timestamp").dt.date()
    local = pl.col("timestamp") + pl.duration(seconds=pl.col("offset_s"))
    candidates = pl.concat(
        [frame.with_columns(day=utc_date + pl.duration(days=shift)) for shift in (-1, 0, 1)]
    ).join(window_frame, on="day", how="inner")
    stats = (
        candidates.filter(local.dt.date() == pl.col("day"))
        .group_by("day")
        .agg(
            hr_min=pl.col("bpm").min(),
            hr_max=pl.col("bpm").max(),
            hr_avg=pl.col("bpm").mean(),
            hr_samples=pl.len(),
        )
        .sort("day")
    )
    by_day = dict(windows)
    return {
        r["day"]: normalize.HeartRateDayStats(
            r["hr_min"], r["hr_max"], r["hr_avg"], r["hr_samples"], by_day[r["day"]]
        )
        for r in stats.iter_rows(named=True)
    }


def _stats_json(stats: dict[date, normalize.HeartRateDayStats]) -> dict[str, list]:
    return {
        day.isoformat(): [s.hr_min, s.hr_max, s.hr_avg, s.hr_samples, s.utc_offset.total_seconds()]
        for day, s in stats.items()
    }


def _worker_hr_stats(spec: dict[str, Any]) -> dict[str, Any]:
    """One arm: peak RSS growth of the first call (VmHWM reset just before it), then timed repeats.

    The input is read from the Parquet file the parent wrote, so nothing but the input was allocated before
    the call. The Python arm gets the samples as tuples (as DuckDB's fetchall() would hand them over).
    """
    offsets, days = hr_offsets(spec["n"])
    frame = pl.read_parquet(spec["input"])
    arm = spec["arm"]
    if arm == "python":
        gc.collect()
        rss_frame = harness.rss_mb()
        rows = frame.rows()
        input_mb = harness.rss_mb() - rss_frame
        del frame

        def call() -> Any:
            return python_day_stats(rows, offsets, days)

        repeat = 3
    else:
        input_mb = frame.estimated_size() / 2**20
        function = normalize.heart_rate_day_stats if arm == "polars" else three_copies_day_stats

        def call() -> Any:
            return function(frame, offsets, days)

        repeat = 5
    gc.collect()
    rss_before = harness.rss_mb()
    peak_reset = harness.reset_peak_rss()
    result = call()
    peak = harness.peak_rss_mb()
    times, cpu_times = [], []
    for _ in range(repeat):
        gc.collect()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        call()
        times.append(time.perf_counter() - wall0)
        cpu_times.append(time.process_time() - cpu0)
    return {
        "arm": arm,
        "best_s": min(times),
        "median_s": statistics.median(times),
        "runs_s": times,
        "cpu_best_s": min(cpu_times),
        "cpu_median_s": statistics.median(cpu_times),
        "repeat": repeat,
        "input_mb": input_mb,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "peak_growth_mb": peak - rss_before,
        "peak_reset": peak_reset,
        "stats": _stats_json(result),
    }


def bench_hr_stats(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    """Local-day heart-rate stats: memory against a plain loop, speed against the previous three-copy form."""
    n = _size(size)["hr_samples"]
    with tempfile.TemporaryDirectory(prefix="oura-bench-") as tmp:
        data = Path(tmp) / "heartrate.parquet"
        hr_frame(n).write_parquet(data)
        spec = {"kind": "hr_stats", "n": n, "input": str(data)}
        arms = {arm: _child({**spec, "arm": arm}, Path(tmp)) for arm in ("python", "three_copies", "polars")}
    python, before, polars = arms["python"], arms["three_copies"], arms["polars"]
    stats = polars.pop("stats")
    same = all(arm.pop("stats") == stats for arm in (python, before))
    counted = sum(v[3] for v in stats.values())
    memory_vs_loop = polars["peak_growth_mb"] / python["peak_growth_mb"]
    label = f"(b) heart_rate_day_stats, {n:,} samples"
    rows += [
        [label, "peak RSS growth, one call: loop / three copies", f"{python['peak_growth_mb']:.0f} MiB / "
         f"{before['peak_growth_mb']:.0f} MiB", f"{polars['peak_growth_mb']:.0f} MiB",
         f"{memory_vs_loop:.2f}x the loop's"],
        [label, "time, best: loop / three copies (CPU)", f"{python['best_s'] * 1e3:.0f} ms / "
         f"{before['best_s'] * 1e3:.0f} ms ({before['cpu_best_s'] * 1e3:.0f} ms)",
         f"{polars['best_s'] * 1e3:.0f} ms ({polars['cpu_best_s'] * 1e3:.0f} ms)",
         f"{before['best_s'] / polars['best_s']:.2f}x the three-copy speed"],
        [label, "same result (days, samples counted)", f"{len(stats)} days", f"{counted:,} samples",
         "identical" if same else "DIFFERENT"],
    ]  # fmt: skip
    return {
        "what": "normalize.heart_rate_day_stats vs a plain Python loop (memory), its three-copy form (speed)",
        "params": {"samples": n, "days": len(stats)},
        "baseline": {"name": "plain Python loop (dict grouping)", **python},
        "previous": {"name": "three candidate copies of the frame (before)", **before},
        "candidate": {"name": "normalize.heart_rate_day_stats", **polars},
        "ratios": {
            "memory_vs_loop": memory_vs_loop,
            "memory_vs_three_copies": polars["peak_growth_mb"] / before["peak_growth_mb"],
            "speed_vs_three_copies_best": before["best_s"] / polars["best_s"],
            "speed_vs_three_copies_median": before["median_s"] / polars["median_s"],
            "cpu_vs_three_copies_best": before["cpu_best_s"] / polars["cpu_best_s"],
        },
        "ok": same and counted > 0,
        "check": "all three give the same HeartRateDayStats for every day",
        "results": {"hr_stats_memory_vs_loop": round(memory_vs_loop, 3)},
    }


WORKERS = {"hr_stats": _worker_hr_stats}

BENCHMARKS = {"loading": bench_loading, "hr_stats": bench_hr_stats, "incremental": bench_incremental}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        request = json.loads(sys.argv[2])
        print(json.dumps(WORKERS[request["kind"]](request), default=str))
    else:
        sys.exit("run through bench/run.py: --only hr_stats")
