"""oura_assets benchmarks: each one against a baseline measured in the same run, quoted as ratios.

    make bench                          # everything, full size
    .venv/bin/python bench/run.py --quick
    .venv/bin/python bench/run.py --only backfill [--only faults ...]

The runner only: the benchmarks live in `bench_*.py` by concern. Writes bench/results/latest.json (every raw
figure) and bench/results.json (the headline figures issue 10 asks for, one key each), and prints a Markdown
table. See bench/README.md for what each benchmark measures, why, and how to read the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_freshness
import bench_heartrate
import bench_loading
import bench_pipeline
import bench_shards
import bench_sync
import harness
from bench_ducklake import bench_ducklake
from common import BENCH_DIR, RESULTS_DIR

SIZES = {
    "full": {
        "patients": 5,
        "hr_samples": 1_000_000,
        "write_samples": 150_000,
        "fault_repeats": 3,
        "nightly_patients": 16,
        "encryption_repeats": 3,
        **bench_sync.SIZES["full"],
    },
    "quick": {
        "patients": 2,
        "hr_samples": 200_000,
        "write_samples": 30_000,
        "fault_repeats": 1,
        "nightly_patients": 6,
        "encryption_repeats": 1,
        **bench_sync.SIZES["quick"],
    },
}

Benchmark = Callable[[dict[str, Any], list[list[str]]], dict[str, Any]]
# One line per benchmark. A benchmark may return "results": {results.json key: value}.
BENCHMARKS: dict[str, Benchmark] = {
    "backfill": bench_pipeline.bench_backfill,
    "hr_write": bench_heartrate.bench_hr_write,
    **bench_loading.BENCHMARKS,  # hr_stats (supersedes bench_heartrate's), loading, incremental
    "faults": bench_pipeline.bench_faults,
    "encryption": bench_pipeline.bench_encryption,
    "nightly": bench_sync.bench_nightly,
    "two_runs": bench_sync.bench_two_runs,
    "economy": bench_sync.bench_economy,
    "newcomer": bench_sync.bench_newcomer,
    "first_data": bench_freshness.bench_first_data,
    "webhook_freshness": bench_freshness.bench_webhook_freshness,
    "ducklake": bench_ducklake,
    "shards": bench_shards.bench_shards,
}

# What a `--worker` child runs, by the spec's `kind`.
WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "materialize": bench_pipeline.worker_materialize,
    "sync": bench_sync.worker_sync,
}

# bench/results.json: the headline figures of issue 10, every key always present (null until measured).
RESULTS_FILE = BENCH_DIR / "results.json"
RESULT_KEYS = (
    "request_economy_vs_bound",
    "request_ratio_vs_per_day",
    "sync_fraction_of_limit",
    "sync_speedup_vs_sequential",
    "two_runs_fraction_of_limit",
    "two_runs_429_share",
    "new_patient_first_data_s_during_backfill",
    "first_data_after_callback_s",
    "hr_samples_per_s",
    "hr_fraction_of_duckdb_ceiling",
    "hr_peak_rss_mb",
    "hr_cost_growth_20_to_200",
    "hr_stats_memory_vs_loop",
    "incremental_cost_ratio_1y_vs_1m",
)


def merge_results(previous: dict[str, Any], produced: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """results.json after a run: the keys this run produced take its values (and `run` as their provenance);
    every other key keeps its previous value and provenance, or null when it was never measured."""
    old_values = previous.get("results", {})
    old_sources = previous.get("measured_by", {})
    # Keys beyond RESULT_KEYS (the webhook freshness figures) stay too: a run of other benchmarks must not
    # drop what an earlier run measured.
    extra = (set(produced) | set(old_values)) - set(RESULT_KEYS)
    keys = [*RESULT_KEYS, *sorted(extra)]
    values, sources = {}, {}
    for key in keys:
        if key in produced:
            values[key], sources[key] = produced[key], run
        else:
            values[key], sources[key] = old_values.get(key), old_sources.get(key)
    return {"results": values, "measured_by": sources}


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
    parser.add_argument("--quick", action="store_true", help="smaller sizes (whole run under 5 minutes)")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json", help="results JSON file")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="headline figures JSON file")
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
    produced: dict[str, Any] = {}
    rows: list[list[str]] = []
    began = time.perf_counter()
    for name in names:
        print(f"running {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            results[name] = BENCHMARKS[name](size, rows)
            produced.update(results[name].get("results", {}))
        except Exception as exc:
            traceback.print_exc()
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            rows.append([name, "ERROR", "-", "-", type(exc).__name__])
        results[name]["elapsed_s"] = time.perf_counter() - t0
        print(f"  {name}: {'ok' if results[name]['ok'] else 'FAILED'} in {results[name]['elapsed_s']:.0f} s")

    table = markdown_table(rows)
    generated_at = datetime.now(UTC).isoformat(timespec="seconds")
    command = " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    report = {
        "generated_at": generated_at,
        "command": command,
        "size": size_name,
        "sizes": size,
        "machine": machine,
        "total_s": time.perf_counter() - began,
        "benchmarks": results,
        "table_markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    previous = json.loads(args.results.read_text()) if args.results.exists() else {}
    run = {"generated_at": generated_at, "command": command, "size": size_name}
    headline = merge_results(previous, produced, run)
    args.results.write_text(json.dumps(headline, indent=2) + "\n")
    print()
    print(table)
    print(f"\nresults: {args.out}, headline figures: {args.results} ({report['total_s']:.0f} s in all)")
    failed = [name for name, r in results.items() if not r["ok"]]
    if failed:
        print(f"FAILED checks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
