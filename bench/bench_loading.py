"""Benchmarks of local work on heart rate (issue 10): loading fetched pages, local-day statistics.

    .venv/bin/python bench/run.py --only loading --only hr_stats [--quick]

`loading`: heart rate for many patients x 90 days, from the page bytes Oura sends (as the client holds them
after fetching) to committed rows in `oura_raw.heartrate`, by the pipeline's path (`next_token_of` per page,
`parse_pages`, `screen_columns`, `replace_raw_heartrate_columns` in one transaction per patient) against
DuckDB's own `read_json` + INSERT of the same bytes in one statement (the local ceiling), and against the
previous row-by-row path on a subset. `hr_stats`: `normalize.heart_rate_day_stats` against a plain Python
loop (memory, the issue's measure) and against its previous three-copy form (speed), same input.

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
from bench_incremental import bench_incremental

from oura_assets import normalize
from oura_assets import warehouse as wh

HR_START = datetime(2024, 1, 1, tzinfo=UTC)
LOAD_DAYS = 90
LOAD_FIRST_DAY = date(2024, 3, 1)
PAGE_SIZE = 200  # the simulator's heart-rate page size (real Oura: ~600, mcp-oura README)
DISTINCT_PROFILES = 10  # patients whose samples are generated; the others reuse them under their own id
SIZES = {
    "full": {"load_patients": 200, "load_small": 20, "load_before": 10, "hr_samples": 1_000_000},
    "quick": {"load_patients": 60, "load_small": 20, "load_before": 4, "hr_samples": 1_000_000},
}
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


# --- loading: input -----------------------------------------------------------------------------------------


def _load_window() -> tuple[datetime, datetime]:
    from oura_assets.sync import heartrate_window

    return heartrate_window(LOAD_FIRST_DAY, LOAD_FIRST_DAY + timedelta(days=LOAD_DAYS - 1))


def write_pages(directory: Path, patients: int) -> dict[str, Any]:
    """Each patient's heart-rate pages for 90 days, as the simulator answers the client's requests.

    The client asks in windows of at most 30 days (`heartrate_windows`); each window's samples come in pages
    of `PAGE_SIZE` rendered as the simulator renders them (its rows, its JSON), `next_token` on all but the
    last. A patient's file holds its pages one per line (NDJSON: what `read_json` reads for the ceiling).
    """
    from oura_assets.oura.client import heartrate_windows
    from oura_assets.simulator import data

    low, high = _load_window()
    profiles = []
    for n in range(min(DISTINCT_PROFILES, patients)):
        name = f"bench-patient-{n}"
        pages = []
        for start, end in heartrate_windows(low, high):
            rows = [
                data.heart_rate_row(name, *s) for s in data.heart_rate(name, start, end, harness.DATA_NOW)
            ]
            for offset in range(0, max(len(rows), 1), PAGE_SIZE):
                body: dict[str, Any] = {"data": rows[offset : offset + PAGE_SIZE]}
                if offset + PAGE_SIZE < len(rows):
                    body["next_token"] = f"{name}-{start:%Y%m%d}-{offset + PAGE_SIZE}"
                pages.append(json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")))
        profiles.append("\n".join(pages) + "\n")
    sizes = []
    for n in range(patients):
        path = directory / f"bench-patient-{n:04d}.json"
        path.write_text(profiles[n % len(profiles)])
        sizes.append(path.stat().st_size)
    return {"patients": patients, "bytes": sum(sizes), "low": low.isoformat(), "high": high.isoformat()}


def _patient_files(directory: Path, patients: int) -> list[Path]:
    return [directory / f"bench-patient-{n:04d}.json" for n in range(patients)]


def _table_digest(store: wh.Warehouse) -> dict[str, Any]:
    """Row count and an order-free digest of oura_raw.heartrate (fetched_at aside), to compare arms."""
    with store.connect("bench: digest") as conn:
        rows, digest = conn.execute(
            "SELECT count(*), sum(hash(patient_id, timestamp, source, bpm, document::VARCHAR))::VARCHAR "
            "FROM oura_raw.heartrate"
        ).fetchone()
    return {"rows": rows, "digest": digest}


# --- loading: the arms (in a child) -------------------------------------------------------------------------


def _old_client_samples(pages: list[bytes], low: datetime, high: datetime) -> list[dict[str, Any]]:
    """The previous client's work on the same pages: json per page, every sample parsed, windowed,
    de-duplicated in a dict and sorted (as `OuraClient.heartrate` did before the pages went to DuckDB)."""
    from oura_assets.oura.client import parse_instant

    samples: dict[tuple[datetime, Any], dict[str, Any]] = {}
    for body in pages:
        page = json.loads(body)
        for row in page["data"]:
            instant = parse_instant(row.get("timestamp")) if isinstance(row, dict) else None
            if instant is not None and low <= instant < high:
                samples[(instant, row.get("source"))] = row
    return [samples[key] for key in sorted(samples, key=lambda k: (k[0], str(k[1])))]


def _worker_load(spec: dict[str, Any]) -> dict[str, Any]:
    from oura_assets.oura import heartrate_pages
    from oura_assets.sync_errors import screen_columns, screen_samples

    directory, arm = Path(spec["dir"]), spec["arm"]
    files = _patient_files(directory, spec["patients"])
    low, high = datetime.fromisoformat(spec["low"]), datetime.fromisoformat(spec["high"])
    store = wh.Warehouse(directory / f"{arm}-{spec['patients']}.duckdb")
    store.ensure_schema()
    fetched_at = datetime(2024, 7, 15, tzinfo=UTC)
    path = "/v2/usercollection/heartrate"
    gc.collect()
    rss_before = harness.rss_mb()
    peak_reset = harness.reset_peak_rss()
    cpu = wall = 0.0
    written = 0
    if arm == "ceiling":
        # DuckDB's own: every patient's pages read by read_json and inserted in one statement.
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with store.transaction("bench: ceiling") as conn:
            (written,) = conn.execute(
                "INSERT OR IGNORE INTO oura_raw.heartrate "
                "SELECT regexp_extract(filename, 'bench-patient-[0-9]+'), ts, (d->>'source'), "
                "CAST((d->>'bpm') AS INTEGER), d, ?::TIMESTAMPTZ "
                "FROM (SELECT filename, d, TRY_CAST((d->>'timestamp') AS TIMESTAMPTZ) AS ts FROM "
                "(SELECT filename, unnest(data) AS d FROM read_json(?, format = 'newline_delimited', "
                "columns = {'data': 'JSON[]', 'next_token': 'VARCHAR'}, filename = true))) "
                "WHERE ts >= ? AND ts < ?",
                [fetched_at, [str(f) for f in files], low, high],
            ).fetchone()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    else:
        for file in files:
            patient_id = file.stem
            pages = file.read_bytes().splitlines()  # what the client holds after fetching: not timed
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if arm == "pipeline":
                for body in pages:  # the client reads each page's next_token as it arrives
                    heartrate_pages.next_token_of(body, path)
                columns = heartrate_pages.parse_pages(pages, low, high, path)
                landable, _ = screen_columns(columns)
                with store.transaction("bench: heart rate") as conn:
                    written += wh.replace_raw_heartrate_columns(
                        conn, patient_id, low, high, landable, fetched_at
                    )
            else:  # before: the previous row-by-row path
                good, _ = screen_samples(_old_client_samples(pages, low, high))
                with store.transaction("bench: heart rate") as conn:
                    written += wh.replace_raw_heartrate(conn, patient_id, low, high, good, fetched_at)
            cpu += time.process_time() - cpu0
            wall += time.perf_counter() - wall0
            del pages
    peak = harness.peak_rss_mb()
    return {
        "arm": arm,
        "patients": spec["patients"],
        "samples": int(written),
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_us_per_sample": cpu / max(written, 1) * 1e6,
        "samples_per_s_wall": written / wall if wall else 0.0,
        "samples_per_s_cpu": written / cpu if cpu else 0.0,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "peak_reset": peak_reset,
        "table": _table_digest(store),
    }


def _same(same: bool) -> str:
    return "identical" if same else "DIFFERENT"


def bench_loading(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    """Heart rate from page bytes to committed rows: the pipeline vs DuckDB's read_json + insert."""
    sizes = _size(size)
    n, small, before_n = sizes["load_patients"], sizes["load_small"], sizes["load_before"]
    with tempfile.TemporaryDirectory(prefix="oura-bench-load-") as tmp:
        directory = Path(tmp)
        t0 = time.perf_counter()
        made = write_pages(directory, n)
        made["generate_s"] = time.perf_counter() - t0
        base = {"kind": "load", "dir": tmp, "low": made["low"], "high": made["high"]}
        pipeline = _child({**base, "arm": "pipeline", "patients": n}, directory)
        ceiling = _child({**base, "arm": "ceiling", "patients": n}, directory)
        pipeline_small = _child({**base, "arm": "pipeline", "patients": small}, directory)
        before = _child({**base, "arm": "before", "patients": before_n}, directory)
        pipeline_before = _child({**base, "arm": "pipeline", "patients": before_n}, directory)
    same_as_ceiling = pipeline["table"] == ceiling["table"] and pipeline["table"]["rows"] > 0
    same_as_before = before["table"] == pipeline_before["table"]
    fraction_wall = pipeline["samples_per_s_wall"] / ceiling["samples_per_s_wall"]
    fraction_cpu = pipeline["samples_per_s_cpu"] / ceiling["samples_per_s_cpu"]
    growth = pipeline["cpu_us_per_sample"] / pipeline_small["cpu_us_per_sample"]
    speedup = before["cpu_us_per_sample"] / pipeline_before["cpu_us_per_sample"]
    samples = pipeline["samples"]
    label = f"(g) heart-rate loading, {n} patients x {LOAD_DAYS} d ({samples:,} samples)"
    rows += [
        [label, "samples/s, wall (CPU)",
         f"{ceiling['samples_per_s_wall']:,.0f} ({ceiling['samples_per_s_cpu']:,.0f})",
         f"{pipeline['samples_per_s_wall']:,.0f} ({pipeline['samples_per_s_cpu']:,.0f})",
         f"{fraction_wall:.0%} of DuckDB's read_json + insert ({fraction_cpu:.0%} by CPU)"],
        [label, "peak RSS of the loading process", f"{ceiling['peak_rss_mb']:.0f} MiB",
         f"{pipeline['peak_rss_mb']:.0f} MiB", ""],
        [label, f"CPU per sample, {small} -> {n} patients", f"{pipeline_small['cpu_us_per_sample']:.2f} us",
         f"{pipeline['cpu_us_per_sample']:.2f} us", f"{growth:.2f}x"],
        [label, f"CPU per sample vs the previous path ({before_n} patients)",
         f"{before['cpu_us_per_sample']:.2f} us", f"{pipeline_before['cpu_us_per_sample']:.2f} us",
         f"{speedup:.1f}x less"],
        [label, "same rows (ceiling / previous path)?", "", "",
         f"{_same(same_as_ceiling)} / {_same(same_as_before)}"],
    ]  # fmt: skip
    return {
        "what": "page bytes -> oura_raw.heartrate: pipeline (DuckDB parse + Arrow) vs read_json + INSERT",
        "params": {**sizes, "days": LOAD_DAYS, "page_size": PAGE_SIZE, **made},
        "baseline": {"name": "DuckDB read_json + INSERT, one statement", **ceiling},
        "candidate": {"name": "pipeline, one transaction per patient", **pipeline},
        "candidate_small": pipeline_small,
        "before": {"name": "previous row-by-row path", **before},
        "candidate_on_before_subset": pipeline_before,
        "ok": same_as_ceiling and same_as_before,
        "check": "the pipeline's table equals the ceiling's and (on a subset) the previous path's",
        "results": {
            "hr_samples_per_s": round(pipeline["samples_per_s_wall"]),
            "hr_fraction_of_duckdb_ceiling": round(fraction_wall, 3),
            "hr_peak_rss_mb": round(pipeline["peak_rss_mb"], 1),
            "hr_cost_growth_20_to_200": round(growth, 3),
        },
    }


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


WORKERS = {"load": _worker_load, "hr_stats": _worker_hr_stats}

BENCHMARKS = {"loading": bench_loading, "hr_stats": bench_hr_stats, "incremental": bench_incremental}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        request = json.loads(sys.argv[2])
        print(json.dumps(WORKERS[request["kind"]](request), default=str))
    else:
        sys.exit("run through bench/run.py: --only loading / --only hr_stats")
