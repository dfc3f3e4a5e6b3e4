"""Incremental cost (issue 10): the nightly run over a warehouse holding 1 year of history vs 1 month.

    .venv/bin/python bench/run.py --only incremental [--quick]

The nightly run recomputes only its partition (yesterday plus the lookback), so its cost should not grow with
the history the warehouse holds. Measured the way the nightly run does it: the `oura_sync` job (raw assets
from the simulator, the patient graph, the checks, the analytics snapshot) materialized as one ranged run in
a child process, against a warehouse pre-filled with N patients' history.

Pre-filling N patients x 365 days through the pipeline would take hours, so one template patient's history
is synced for real (a ranged backfill through the same job, in a child) and its rows, in every table keyed
by patient, are copied to the other N - 1 patients in SQL. The N patients are connected through the real
OAuth flow (so the nightly run fetches each from the simulator). Both arms are built the same way and differ
only in the history's length; the figure is the nightly run's CPU time (the child's, all threads; the
simulator serves from the parent) and wall time, 1 year over 1 month.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import harness
from common import run_worker, size_of

from oura_assets import analytics
from oura_assets import warehouse as wh
from oura_assets_tests import support

NIGHTLY_LAST_DAY = date(2024, 7, 14)  # the day before harness.DATA_NOW: what the nightly schedule asks for
NIGHTLY_DAYS = 4  # yesterday plus the default 3-day lookback
SIZES = {
    "full": {"patients": [20, 100, 300, 1000], "long": 365, "short": 30},
    "quick": {"patients": [20], "long": 365, "short": 30},
}
# e.g. `20,100`: the patient counts to measure, smallest first (the trend with size is part of the answer).
PATIENTS_VARIABLE = "OURA_BENCH_INCREMENTAL_PATIENTS"
# Tables a copied patient must not inherit: its own connection (made through OAuth) and what only the
# template's connecting wrote.
NOT_COPIED = {"patient_graph.wearable_connections", "patient_graph.patient_events", "patient_graph.audit_log"}
WORKER_TIMEOUT_S = 3600


def _child(spec: dict[str, Any], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    label = f"{spec['kind']}-{spec.get('label', '')}"
    return run_worker(spec, env, cwd, WORKER_TIMEOUT_S, script=Path(__file__).resolve(), label=label)


def _worker_run(spec: dict[str, Any]) -> dict[str, Any]:
    """One ranged run of the `oura_sync` job over [start, end]: its wall and CPU time."""
    import logging

    import dagster as dg

    from oura_assets.definitions import defs as load_defs

    logging.getLogger("httpx").setLevel(logging.WARNING)
    definitions = load_defs()
    definitions.resolve_job_def(support.SYNC_JOB)
    instance = dg.DagsterInstance.ephemeral()
    start, end = date.fromisoformat(spec["start"]), date.fromisoformat(spec["end"])
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = support.run_sync(start, end, definitions=definitions, instance=instance)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if not result.success:
        raise RuntimeError(f"run {start}..{end} failed: {support.failures(result)[:3]}")
    steps = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS" and event.step_key:
            steps[event.step_key] = event.event_specific_data.duration_ms / 1000
    return {"cpu_s": cpu, "wall_s": wall, "step_wall_s": steps, "peak_rss_mb": harness.peak_rss_mb()}


def _copy_template(store: wh.Warehouse, template: str, patients: list[str]) -> dict[str, int]:
    """Copy the template patient's rows of every patient-keyed table to each of `patients`."""
    copied: dict[str, int] = {}
    with store.transaction("bench: copy history") as conn:
        tables = [
            f"{schema}.{name}"
            for schema, name in conn.execute(
                "SELECT table_schema, table_name FROM information_schema.columns "
                "WHERE column_name = 'patient_id' AND table_catalog = current_database() "
                "AND table_schema IN ('oura_raw', 'patient_graph') "
                "AND table_name IN "
                "(SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE')"
            ).fetchall()
        ]
        for table in tables:
            if table in NOT_COPIED:
                continue
            (written,) = conn.execute(
                f"INSERT INTO {table} SELECT t.* REPLACE (p.id AS patient_id) "  # noqa: S608 (catalog names)
                f"FROM {table} t, (SELECT unnest(?::VARCHAR[]) AS id) p WHERE t.patient_id = ?",
                [patients, template],
            ).fetchone()
            copied[table] = int(written)
    with store.connect("bench: checkpoint") as conn:
        conn.execute("CHECKPOINT")
    return copied


def _age_history(store: wh.Warehouse) -> None:
    """The copied history was written on earlier nights: its sync results are dated a day back, as they would
    be, so the nightly run's snapshot refresh sees only tonight's results as changes."""
    with store.transaction("bench: date the history back") as conn:
        conn.execute("UPDATE patient_graph.sync_results SET recorded_at = recorded_at - INTERVAL 1 DAY")


def _arms(history_days: int, sizes: list[int], workdir: Path) -> dict[int, dict[str, Any]]:
    """A warehouse with N patients x `history_days` of history for each N in `sizes` (one template backfill
    shared by all), then the nightly run over each."""
    template = workdir / f"history-{history_days}.duckdb"
    server = harness.start_simulator()
    arms: dict[int, dict[str, Any]] = {}
    try:
        # The year of history starts before harness.START_DATE, the partitions' first day.
        env = {**harness.pipeline_env(server.url, template), "OURA_ASSETS_START_DATE": "2023-01-01"}
        ids = [f"bench-patient-{n:04d}" for n in range(max(sizes))]
        with harness.applied_env(env) as settings:
            support.connect_patient(settings, ids[0])
        history_end = NIGHTLY_LAST_DAY - timedelta(days=NIGHTLY_DAYS)
        history_start = history_end - timedelta(days=history_days - 1)
        t0 = time.perf_counter()
        _child(
            {"kind": "run", "label": f"history-{history_days}", "start": history_start.isoformat(),
             "end": history_end.isoformat()},
            {**env, "OURA_ASSETS_ANALYTICS": str(workdir / "template-analytics.duckdb")},
            workdir,
        )  # fmt: skip
        backfill_s = time.perf_counter() - t0
        for patients in sizes:
            warehouse = workdir / f"history-{history_days}-{patients}.duckdb"
            shutil.copyfile(template, warehouse)
            snapshot = workdir / f"analytics-{history_days}-{patients}.duckdb"
            arm_env = {**env, "OURA_ASSETS_WAREHOUSE": str(warehouse), "OURA_ASSETS_ANALYTICS": str(snapshot)}
            store = wh.Warehouse(warehouse)
            copied = _copy_template(store, ids[0], ids[1:patients])
            with harness.applied_env(arm_env) as settings:
                for patient_id in ids[1:patients]:
                    support.connect_patient(settings, patient_id, learn_oura_user_id=False)
            _age_history(store)
            # Last night's snapshot, as the nightly run finds it (untimed: a whole copy, made once).
            previous = analytics.publish_snapshot(store, snapshot)
            before_mb = warehouse.stat().st_size / 2**20
            nightly_start = NIGHTLY_LAST_DAY - timedelta(days=NIGHTLY_DAYS - 1)
            server.control.reset_stats()
            run = _child(
                {"kind": "run", "label": f"nightly-{history_days}-{patients}",
                 "start": nightly_start.isoformat(), "end": NIGHTLY_LAST_DAY.isoformat()},
                arm_env,
                workdir,
            )  # fmt: skip
            requests = server.control.stats()["total_requests"]
            print(f"  incremental, {patients} patients, {history_days} d of history: nightly run "
                  f"{run['cpu_s']:.1f} s CPU, {run['wall_s']:.1f} s wall", flush=True)  # fmt: skip
            arms[patients] = {
                **run,
                "history_days": history_days,
                "patients": patients,
                "template_backfill_s": backfill_s,
                "rows_copied": copied,
                "warehouse_mb_before_run": before_mb,
                "snapshot_mb_before_run": previous.path.stat().st_size / 2**20,
                "http_requests": requests,
            }
            for leftover in (warehouse, snapshot):
                leftover.unlink(missing_ok=True)
    finally:
        server.stop()
    return arms


def bench_incremental(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    """The nightly run for N patients over 1 year of history vs over 1 month, for each N of the sweep."""
    sizes = size_of(SIZES, size)
    sweep = [int(n) for n in os.environ.get(PATIENTS_VARIABLE, "").split(",") if n] or sizes["patients"]
    with tempfile.TemporaryDirectory(prefix="oura-bench-incr-") as tmp:
        short = _arms(sizes["short"], sweep, Path(tmp))
        long = _arms(sizes["long"], sweep, Path(tmp))
    ratios: dict[int, dict[str, float]] = {}
    for n in sweep:
        ratios[n] = {
            "cpu": long[n]["cpu_s"] / short[n]["cpu_s"],
            "wall": long[n]["wall_s"] / short[n]["wall_s"],
        }
        label = f"(h) nightly run, {n} patients x {NIGHTLY_DAYS} d"
        rows += [
            [label, f"CPU time: {sizes['short']} d of history / {sizes['long']} d",
             f"{short[n]['cpu_s']:.1f} s", f"{long[n]['cpu_s']:.1f} s", f"{ratios[n]['cpu']:.2f}x"],
            [label, "wall time", f"{short[n]['wall_s']:.1f} s", f"{long[n]['wall_s']:.1f} s",
             f"{ratios[n]['wall']:.2f}x"],
            [label, "warehouse / snapshot before the run, HTTP requests",
             f"{short[n]['warehouse_mb_before_run']:.0f} / {short[n]['snapshot_mb_before_run']:.0f} MiB, "
             f"{short[n]['http_requests']}",
             f"{long[n]['warehouse_mb_before_run']:.0f} / {long[n]['snapshot_mb_before_run']:.0f} MiB, "
             f"{long[n]['http_requests']}", ""],
        ]  # fmt: skip
    largest = sweep[-1]
    return {
        "what": "the oura_sync job over the nightly range, warehouse pre-filled with 1 month vs 1 year",
        "params": {
            **sizes,
            "patients": sweep,
            "nightly_days": NIGHTLY_DAYS,
            "nightly_last_day": NIGHTLY_LAST_DAY.isoformat(),
        },
        "baseline": {"name": f"{sizes['short']} days of history", "by_patients": short},
        "candidate": {"name": f"{sizes['long']} days of history", "by_patients": long},
        "ratios": {"by_patients": ratios, "largest": largest},
        "ok": all(
            short[n]["http_requests"] == long[n]["http_requests"] and short[n]["http_requests"] > 0
            for n in sweep
        ),
        "check": "every nightly run succeeds and asks Oura the same number of requests in both arms",
        "results": {"incremental_cost_ratio_1y_vs_1m": round(ratios[largest]["cpu"], 3)},
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        request = json.loads(sys.argv[2])
        print(json.dumps(_worker_run(request), default=str))
    else:
        sys.exit("run through bench/run.py: --only incremental")
