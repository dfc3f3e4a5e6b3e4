"""What the benchmarks share: timing and formatting helpers, child-process workers, and one materialization
arm (a fresh simulator and warehouse, patients connected, the job run in a child process).

Each `bench_*.py` module holds benchmarks of one concern; `run.py` runs them and writes the results.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import harness

from oura_assets import warehouse as wh
from oura_assets_tests import support

BENCH_DIR = Path(__file__).resolve().parent
RUNNER = BENCH_DIR / "run.py"
RESULTS_DIR = BENCH_DIR / "results"

# Thirty days in the middle of 2024: long settled on the simulator's frozen data clock (harness.DATA_NOW).
BACKFILL_START = date(2024, 6, 1)
BACKFILL_DAYS = 30
# A nightly run: yesterday plus the default 3-day lookback.
NIGHTLY_DAYS = 4

WORKER_TIMEOUT_S = 480
# When each raw document was first seen and last changed (document revisions): times, like fetched_at, that
# differ between two runs of the same data, so the arms' tables are compared without them.
REVISION_TIMES = frozenset({"first_seen_at", "last_changed_at"})


def day_list(start: date, n: int) -> list[date]:
    return [start + timedelta(days=i) for i in range(n)]


def summary(samples: list[float]) -> dict[str, Any]:
    return {"best_s": min(samples), "median_s": statistics.median(samples), "runs_s": samples}


def timed(fn: Callable[[], Any], repeat: int) -> tuple[dict[str, Any], Any]:
    samples, result = [], None
    for _ in range(repeat):
        gc.collect()
        began = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - began)
    return summary(samples), result


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def ratio(baseline: float, candidate: float) -> float:
    return baseline / candidate if candidate else float("inf")


def times(ratio: float, better: str, worse: str, digits: int = 1) -> str:
    """`ratio` is baseline / candidate: "4.1x faster" above 1, "1.6x more" (inverted) below."""
    return f"{ratio:.{digits}f}x {better}" if ratio >= 1 else f"{1 / ratio:.{digits}f}x {worse}"


def mib(arm: dict[str, Any]) -> str:
    return f"{arm['peak_rss_mb']:.0f} MiB (+{arm['peak_rss_mb'] - arm['rss_before_mb']:.0f})"


def run_worker(
    spec: dict[str, Any],
    env: dict[str, str],
    cwd: Path,
    timeout_s: float,
    *,
    script: Path = RUNNER,
    label: str | None = None,
) -> dict[str, Any]:
    """Run one measured arm in a fresh interpreter (`script --worker <spec>`) so its peak RSS is its own;
    return its JSON answer. Its stderr goes to `worker-<label>.log` in `cwd`, whose tail an error quotes."""
    label = label or f"{spec['kind']}-{spec.get('mode', spec.get('arm', ''))}"
    log = cwd / f"worker-{label}.log"
    with log.open("w") as stderr:
        answer = subprocess.run(
            [sys.executable, str(script), "--worker", json.dumps(spec)],
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
        raise RuntimeError(f"worker {label} exited {answer.returncode}:\n{tail}")
    return json.loads(answer.stdout.strip().splitlines()[-1])


def size_of(sizes: dict[str, Any], size: dict[str, Any]) -> Any:
    """A module's `sizes["quick"]` or `sizes["full"]` for this run: run.py passes its own size dict, in
    which `patients` tells quick."""
    return sizes["quick" if size.get("patients", 5) <= 2 else "full"]


def materialize_arm(
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
            measured = run_worker(
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
            snapshot = support.snapshot(conn, drop=support.VOLATILE | REVISION_TIMES)
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


def compare(baseline: dict, candidate: dict) -> dict[str, dict[str, Any]]:
    return {
        table: {
            "identical": rows == candidate[table],
            "rows": len(rows),
            "candidate_rows": len(candidate[table]),
        }
        for table, rows in baseline.items()
    }


def arm_ratios_and_rows(
    label: str, baseline: dict, candidate: dict
) -> tuple[dict[str, float], list[list[str]]]:
    """Wall time, requests served and peak RSS of two materialization arms, as ratios and table rows."""
    ratios = {
        "wall_time_speedup": ratio(baseline["wall_s"], candidate["wall_s"]),
        "http_requests_ratio": ratio(baseline["http_requests"], candidate["http_requests"]),
        "peak_rss_ratio": ratio(baseline["peak_rss_mb"], candidate["peak_rss_mb"]),
    }
    rss = "peak RSS of the run process (growth during runs)"
    rows = [
        [label, "wall time", fmt_s(baseline["wall_s"]), fmt_s(candidate["wall_s"]),
         times(ratios["wall_time_speedup"], "faster", "slower")],
        [label, "HTTP requests served", str(baseline["http_requests"]), str(candidate["http_requests"]),
         times(ratios["http_requests_ratio"], "fewer", "more")],
        [label, rss, mib(baseline), mib(candidate), times(ratios["peak_rss_ratio"], "less", "more", 2)],
    ]  # fmt: skip
    return ratios, rows
