"""Heart-rate loading benchmark (issue 10): fetched pages to committed rows, against DuckDB's own ceiling.

    .venv/bin/python bench/run.py --only loading [--quick]

Heart rate for many patients x 90 days, from the page bytes Oura sends (as the client holds them after
fetching) to committed rows in `oura_raw.heartrate`. Arms, each in a fresh child process (this file run with
`--worker`) so its peak RSS (VmHWM, reset after imports and set-up) and CPU time are its own:

- `pipeline`: the run's own path, `sync.sync_patients` over the 90 days with only heart rate: patients in
  fetch threads (`max_workers` 4, as `sync_patients` defaults), each reading its pages the way
  `OuraClient.heartrate_columns` does (`next_token_of` per page, one `parse_pages`), `screen_columns`, and
  the run's one writer thread (`GroupWriter`) landing them with their sync results, up to 25 patients per
  transaction. Only the network is replaced: a patient's "fetch" reads its pages from a file. At 200
  patients and at 20 (the cost growth); every open and close of the warehouse file is timed apart.
- `ceiling`: DuckDB's own `read_json` + INSERT of every patient's bytes in one statement (the local ceiling).
- `floor`: the writer's insert alone: every patient's pages parsed first (untimed, as fetch threads would),
  then only the inserts timed, 25 patients a transaction on one DuckDB thread, as the run's writer lands them
  (`replace_raw_heartrate_columns` into windows the table does not hold yet), without the sync bookkeeping.
  No path that lands the parsed columns through one writer can go faster than this; it says how much of
  the pipeline's time is the parse and the bookkeeping beside it.
- `before`: the row-by-row path before `heartrate_pages`, one transaction per patient, on a subset, against
  `pipeline` on the same subset.

CPU time (`time.process_time`, all the child's threads) is quoted beside wall time: the machine these were
written on is shared, and CPU time moves far less with the load than wall time does.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import harness
from common import run_worker, size_of

from oura_assets import warehouse as wh

LOAD_DAYS = 90
LOAD_FIRST_DAY = datetime(2024, 3, 1).date()
PAGE_SIZE = 200  # the simulator's heart-rate page size (real Oura: ~600, mcp-oura README)
DISTINCT_PROFILES = 10  # patients whose samples are generated; the others reuse them under their own id
SIZES = {
    "full": {"load_patients": 200, "load_small": 20, "load_before": 10},
    "quick": {"load_patients": 60, "load_small": 20, "load_before": 4},
}
PATH = "/v2/usercollection/heartrate"
FETCHED_AT = datetime(2024, 7, 15, tzinfo=UTC)
WORKER_TIMEOUT_S = 900


# --- input -----------------------------------------------------------------------------------------------


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


# --- the arms (in a child) ----------------------------------------------------------------------------------


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


class _Timed:
    """CPU and wall seconds spent in the blocks it times."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0

    def __enter__(self) -> _Timed:
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.cpu += time.process_time() - self._cpu
        self.wall += time.perf_counter() - self._wall


def _time_open_close(timed: _Timed) -> None:
    """Time every open and close of a warehouse file in this process (the close checkpoints the file) into
    `timed`: patched on the class, because a run works on copies of the `Warehouse` it is given
    (`reporting_waits_to`)."""
    open_, close = wh.Warehouse._open, wh.Warehouse._close  # measured, not changed

    def timed_open(self: wh.Warehouse, wait: Any) -> duckdb.DuckDBPyConnection:
        with timed:
            return open_(self, wait)

    def timed_close(self: wh.Warehouse, conn: duckdb.DuckDBPyConnection) -> None:
        with timed:
            close(self, conn)

    wh.Warehouse._open, wh.Warehouse._close = timed_open, timed_close  # type: ignore[method-assign]


def _ceiling(store: wh.Warehouse, files: list[Path], low: datetime, high: datetime) -> int:
    """DuckDB's own: every patient's pages read by read_json and inserted in one statement, one row per key
    (`DISTINCT ON`: the table has no primary key for an `INSERT OR IGNORE` to lean on)."""
    with store.transaction("bench: ceiling") as conn:
        (written,) = conn.execute(
            "INSERT INTO oura_raw.heartrate "
            "SELECT DISTINCT ON (patient_id, ts, source) patient_id, ts, source, "
            "CAST((d->>'bpm') AS INTEGER), d, ?::TIMESTAMPTZ "
            "FROM (SELECT regexp_extract(filename, 'bench-patient-[0-9]+') AS patient_id, d, "
            "TRY_CAST((d->>'timestamp') AS TIMESTAMPTZ) AS ts, (d->>'source') AS source FROM "
            "(SELECT filename, unnest(data) AS d FROM read_json(?, format = 'newline_delimited', "
            "columns = {'data': 'JSON[]', 'next_token': 'VARCHAR'}, filename = true))) "
            "WHERE ts >= ? AND ts < ?",
            [FETCHED_AT, [str(f) for f in files], low, high],
        ).fetchone()
    return int(written)


class _PagesClient:
    """An Oura client whose heart rate comes from a file of pages (one per line) instead of the network: it
    does with the bytes what `OuraClient.heartrate_columns` does once they have arrived."""

    def __init__(self, file: Path) -> None:
        self._file = file

    def heartrate_columns(self, start: datetime, end: datetime) -> Any:
        from oura_assets.oura import heartrate_pages

        pages = self._file.read_bytes().splitlines()  # what the network would have handed over
        for body in pages:  # the client reads each page's next_token as it arrives
            heartrate_pages.next_token_of(body, PATH)
        return heartrate_pages.parse_pages(pages, start.astimezone(UTC), end.astimezone(UTC), PATH)


def _insert_floor(
    store: wh.Warehouse, files: list[Path], low: datetime, high: datetime, timed: _Timed
) -> int:
    """The writer's inserts alone (`floor`): the pages parsed and screened untimed, then each group of
    patients inserted in one transaction, timed, as `GroupWriter` lands them (one DuckDB thread)."""
    from oura_assets.sync_errors import screen_columns
    from oura_assets.warehouse.encryption import single_threaded
    from oura_assets.warehouse.group_writer import MAX_GROUP

    parsed = [
        (file.stem, screen_columns(_PagesClient(file).heartrate_columns(low, high))[0]) for file in files
    ]
    written = 0
    with timed, single_threaded():
        for first in range(0, len(parsed), MAX_GROUP):
            with store.transaction("bench: heart rate floor") as conn:
                for patient_id, columns in parsed[first : first + MAX_GROUP]:
                    written += wh.replace_raw_heartrate_columns(
                        conn, patient_id, low, high, columns, FETCHED_AT, stored=0
                    )
    return written


def _pipeline(store: wh.Warehouse, files: list[Path]) -> int:
    """`sync.sync_patients` over the load's days, heart rate only, each patient's pages read from its file."""
    from oura_assets import sync

    by_patient = {file.stem: file for file in files}
    outcome = sync.sync_patients(
        patients=list(by_patient),
        client_for=lambda patient_id: _PagesClient(by_patient[patient_id]),  # type: ignore[arg-type,return-value]
        warehouse=store,
        start=LOAD_FIRST_DAY,
        end=LOAD_FIRST_DAY + timedelta(days=LOAD_DAYS - 1),
        run_id="bench-loading",
        collections=["heartrate"],
        purpose="bench: heart rate",
    )
    failed = [r for r in outcome.results if r.status != "success"]
    if failed:
        raise RuntimeError(f"{len(failed)} patient(s) did not land: {failed[0]}")
    return sum(r.rows.get("oura_raw.heartrate", 0) for r in outcome.results)


def _worker_load(spec: dict[str, Any]) -> dict[str, Any]:
    from oura_assets.sync_errors import screen_samples

    directory, arm = Path(spec["dir"]), spec["arm"]
    files = _patient_files(directory, spec["patients"])
    low, high = datetime.fromisoformat(spec["low"]), datetime.fromisoformat(spec["high"])
    db_path = directory / f"{arm}-{spec['patients']}.duckdb"
    store = wh.Warehouse(db_path)
    store.ensure_schema()
    open_close = _Timed()
    _time_open_close(open_close)
    gc.collect()
    rss_before = harness.rss_mb()
    peak_reset = harness.reset_peak_rss()
    timed = _Timed()
    written = 0
    with timed:
        if arm == "ceiling":
            written = _ceiling(store, files, low, high)
        elif arm == "pipeline":
            written = _pipeline(store, files)
    if arm == "floor":  # its parse happens before, untimed
        written = _insert_floor(store, files, low, high, timed)
    if arm == "before":  # the previous row-by-row path, one transaction per patient
        for file in files:
            pages = file.read_bytes().splitlines()  # what the client holds after fetching: not timed
            with timed:
                good, _ = screen_samples(_old_client_samples(pages, low, high))
                with store.transaction("bench: heart rate") as conn:
                    written += wh.replace_raw_heartrate(conn, file.stem, low, high, good, FETCHED_AT)
            del pages
    peak = harness.peak_rss_mb()
    cpu, wall = timed.cpu, timed.wall
    return {
        "arm": arm,
        "patients": spec["patients"],
        "samples": written,
        "cpu_s": cpu,
        "wall_s": wall,
        "open_close_cpu_s": open_close.cpu,
        "open_close_wall_s": open_close.wall,
        "cpu_us_per_sample": cpu / max(written, 1) * 1e6,
        "samples_per_s_wall": written / wall if wall else 0.0,
        "samples_per_s_cpu": written / cpu if cpu else 0.0,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "peak_reset": peak_reset,
        "table": _table_digest(store),
    }


# --- the benchmark (in the parent) --------------------------------------------------------------------------


def _child(spec: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """Run one arm in a fresh interpreter (this file with `--worker`); return its JSON answer."""
    label = f"{spec['arm']}-{spec['patients']}"
    return run_worker(spec, {}, cwd, WORKER_TIMEOUT_S, script=Path(__file__).resolve(), label=label)


def _same(same: bool) -> str:
    return "identical" if same else "DIFFERENT"


def _rate(arm: dict[str, Any]) -> str:
    return f"{arm['samples_per_s_wall']:,.0f} ({arm['samples_per_s_cpu']:,.0f})"


def bench_loading(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    """Heart rate from page bytes to committed rows: the pipeline vs DuckDB's read_json + insert."""
    sizes = size_of(SIZES, size)
    n, small, before_n = sizes["load_patients"], sizes["load_small"], sizes["load_before"]
    with tempfile.TemporaryDirectory(prefix="oura-bench-load-") as tmp:
        directory = Path(tmp)
        t0 = time.perf_counter()
        made = write_pages(directory, n)
        made["generate_s"] = time.perf_counter() - t0
        base = {"dir": tmp, "low": made["low"], "high": made["high"]}
        pipeline = _child({**base, "arm": "pipeline", "patients": n}, directory)
        ceiling = _child({**base, "arm": "ceiling", "patients": n}, directory)
        floor = _child({**base, "arm": "floor", "patients": n}, directory)
        pipeline_small = _child({**base, "arm": "pipeline", "patients": small}, directory)
        before = _child({**base, "arm": "before", "patients": before_n}, directory)
        pipeline_before = _child({**base, "arm": "pipeline", "patients": before_n}, directory)
    same_as_ceiling = pipeline["table"] == ceiling["table"] and pipeline["table"]["rows"] > 0
    same_as_floor = floor["table"] == ceiling["table"]
    fraction_of_floor = pipeline["samples_per_s_wall"] / floor["samples_per_s_wall"]
    same_as_before = before["table"] == pipeline_before["table"]
    fraction_wall = pipeline["samples_per_s_wall"] / ceiling["samples_per_s_wall"]
    fraction_cpu = pipeline["samples_per_s_cpu"] / ceiling["samples_per_s_cpu"]
    growth = pipeline["cpu_us_per_sample"] / pipeline_small["cpu_us_per_sample"]
    speedup = before["cpu_us_per_sample"] / pipeline_before["cpu_us_per_sample"]
    samples = pipeline["samples"]
    open_close_us = pipeline["open_close_cpu_s"] / samples * 1e6
    label = f"(g) heart-rate loading, {n} patients x {LOAD_DAYS} d ({samples:,} samples)"
    rows += [
        [label, "samples/s, wall (CPU)", _rate(ceiling), _rate(pipeline),
         f"{fraction_wall:.0%} of DuckDB's read_json + insert ({fraction_cpu:.0%} by CPU)"],
        [label, "samples/s, wall (CPU): the writer's inserts alone / pipeline", _rate(floor), _rate(pipeline),
         f"{fraction_of_floor:.0%} of the inserts alone (its parse not timed; "
         f"{floor['cpu_us_per_sample']:.2f} us CPU a sample)"],
        [label, "CPU per sample: ceiling / pipeline", f"{ceiling['cpu_us_per_sample']:.2f} us",
         f"{pipeline['cpu_us_per_sample']:.2f} us", f"of which {open_close_us:.2f} us opening and closing "
         "(checkpointing) the warehouse file, once per group of patients"],
        [label, "peak RSS of the loading process", f"{ceiling['peak_rss_mb']:.0f} MiB",
         f"{pipeline['peak_rss_mb']:.0f} MiB", ""],
        [label, f"CPU per sample, {small} -> {n} patients", f"{pipeline_small['cpu_us_per_sample']:.2f} us",
         f"{pipeline['cpu_us_per_sample']:.2f} us", f"{growth:.2f}x"],
        [label, f"CPU per sample vs the previous path ({before_n} patients)",
         f"{before['cpu_us_per_sample']:.2f} us", f"{pipeline_before['cpu_us_per_sample']:.2f} us",
         f"{speedup:.1f}x less"],
        [label, "same rows (ceiling / inserts alone / previous path)?", "", "",
         f"{_same(same_as_ceiling)} / {_same(same_as_floor)} / {_same(same_as_before)}"],
    ]  # fmt: skip
    return {
        "what": "page bytes -> oura_raw.heartrate: the run's sync_patients (fetch threads, DuckDB parse, one "
        "writer thread, group transactions) vs read_json + INSERT",
        "params": {**sizes, "days": LOAD_DAYS, "page_size": PAGE_SIZE, **made},
        "baseline": {"name": "DuckDB read_json + INSERT, one statement", **ceiling},
        "candidate": {"name": "sync.sync_patients, heart rate only, pages read from files", **pipeline},
        "candidate_small": pipeline_small,
        "insert_floor": {"name": "the writer's inserts alone, pages parsed beforehand (untimed)", **floor},
        "before": {"name": "previous row-by-row path, one transaction per patient", **before},
        "candidate_on_before_subset": pipeline_before,
        "ok": same_as_ceiling and same_as_floor and same_as_before,
        "check": "the pipeline's table equals the ceiling's and the inserts-alone arm's, and (on a subset) "
        "the previous path's",
        "results": {
            "hr_samples_per_s": round(pipeline["samples_per_s_wall"]),
            "hr_fraction_of_duckdb_ceiling": round(fraction_wall, 3),
            "hr_peak_rss_mb": round(pipeline["peak_rss_mb"], 1),
            "hr_cost_growth_20_to_200": round(growth, 3),
            "hr_insert_floor_samples_per_s": round(floor["samples_per_s_wall"]),
        },
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker_load(json.loads(sys.argv[2])), default=str))
    else:
        sys.exit("run through bench/run.py: --only loading")
