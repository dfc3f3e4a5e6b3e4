"""Benchmarks of whole runs of the sync job: (a) a ranged backfill vs day-at-a-time runs, (d) a sync under
injected faults, (f) the nightly run into an encrypted warehouse vs a plain one.
"""

from __future__ import annotations

import gc
import statistics
import time
from datetime import date, timedelta
from typing import Any

import harness
from common import (
    BACKFILL_DAYS,
    BACKFILL_START,
    NIGHTLY_DAYS,
    arm_ratios_and_rows,
    compare,
    day_list,
    fmt_s,
    materialize_arm,
    ratio,
)

from oura_assets_tests import support

FAULTS = {"error_rate": 0.1, "drop_rate": 0.05, "latency_ms": 20}
# (f) encryption: any key of the required length will do; it lives only in the benchmark's children.
BENCH_WAREHOUSE_KEY = "bench-warehouse-key-0123456789abcdef"


def worker_materialize(spec: dict[str, Any]) -> dict[str, Any]:
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
        runs = [(day, None) for day in day_list(start, (end - start).days + 1)]
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


# --- (a) ranged backfill vs day-at-a-time ------------------------------------------------------------------


def bench_backfill(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    patients = [f"bench-patient-{n}" for n in range(size["patients"])]
    start, end = BACKFILL_START, BACKFILL_START + timedelta(days=BACKFILL_DAYS - 1)
    daily = materialize_arm("daily", patients, start, end)
    ranged = materialize_arm("ranged", patients, start, end)
    tables = compare(daily.pop("snapshot"), ranged.pop("snapshot"))
    wearable = tables["patient_graph.wearable_data"]
    label = f"(a) backfill {len(patients)} patients x {BACKFILL_DAYS} d"
    ratios, arm_rows = arm_ratios_and_rows(label, daily, ranged)
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
        clean_runs.append(materialize_arm("ranged", patients, start, end))
        faulty_runs.append(materialize_arm("ranged", patients, start, end, faults=FAULTS, seed=seed))
        snapshots = [clean_runs[-1].pop("snapshot"), faulty_runs[-1].pop("snapshot")]
        reference = reference or snapshots[0]
        for snapshot in snapshots:
            for table, compared in compare(reference, snapshot).items():
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
    overhead = ratio(faulty["wall_s"], clean["wall_s"])
    extra = faulty["wall_s"] - clean["wall_s"]
    rows += [
        [label, f"wall time (median of {n})", fmt_s(clean["wall_s"]), fmt_s(faulty["wall_s"]),
         f"{overhead:.1f}x the time (+{extra:.1f} s)"],
        [label, f"HTTP requests, {n} run(s) (5xx / drops)", str(clean["http_requests"]),
         f"{faulty['http_requests']} ({faulty['injected_errors']} / {faulty['dropped']})",
         f"{ratio(faulty['http_requests'], clean['http_requests']):.2f}x"],
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


# --- (f) the nightly run into an encrypted warehouse vs a plain one ----------------------------------------


def bench_encryption(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    """(f) The same nightly run (no injected latency, so the warehouse's share of the time is as large as it
    gets) into a plain warehouse and into an encrypted one, alternating arms; best of the repeats each."""
    patients = [f"bench-patient-{n}" for n in range(size["nightly_patients"])]
    start, end = BACKFILL_START, BACKFILL_START + timedelta(days=NIGHTLY_DAYS - 1)
    plain_runs, encrypted_runs = [], []
    for _ in range(size["encryption_repeats"]):
        plain_runs.append(materialize_arm("ranged", patients, start, end))
        encrypted_runs.append(
            materialize_arm("ranged", patients, start, end, warehouse_key=BENCH_WAREHOUSE_KEY)
        )
    plain = min(plain_runs, key=lambda arm: arm["wall_s"])
    encrypted = min(encrypted_runs, key=lambda arm: arm["wall_s"])
    tables = compare(plain["snapshot"], encrypted["snapshot"])
    identical = all(t["identical"] for t in tables.values()) and all(
        compare(plain["snapshot"], arm["snapshot"]) == tables for arm in plain_runs + encrypted_runs
    )
    for arm in plain_runs + encrypted_runs:
        arm.pop("snapshot")
    overhead = encrypted["wall_s"] / plain["wall_s"] if plain["wall_s"] else float("nan")
    label = f"(f) nightly {len(patients)} patients x {NIGHTLY_DAYS} d, encrypted"
    walls = {name: [round(a["wall_s"], 2) for a in arms] for name, arms in
             (("plain", plain_runs), ("encrypted", encrypted_runs))}  # fmt: skip
    rows += [
        [label, "wall time (best of runs)", fmt_s(plain["wall_s"]), fmt_s(encrypted["wall_s"]),
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
