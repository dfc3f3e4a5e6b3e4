"""Benchmarks of the network side (issue 10): syncing at Oura's rate limit with one shared, fair budget.

- `nightly`: a nightly run for many patients against Oura's latency and an application limit, vs the seed's
  sequential one-patient-at-a-time run (on a subset, compared per request);
- `two_runs`: a nightly run and a backfill in two processes against one limit;
- `economy`: the requests a 365-day single-run backfill makes, vs the lower bound and vs a per-day fetch;
- `newcomer`: a newly connected patient's initial sync while a year's backfill runs in another process, vs
  the same sync alone.

Every arm syncs with `sync_patients` wired as the `oura_raw` asset wires it (`OuraResource.session()`: the
shared HTTP pool, the host-wide `RateBudget`, concurrency from `suggested_workers`) in a child process of its
own, as Dagster's runs are; Dagster's own per-run cost is (a)'s subject, not these. The simulator stands in
for Oura: 300 ms per data request (what real Oura answers in) and an application limit of 20 requests per
rolling second (Oura's 5,000 per rolling 5 minutes scaled to what this 2-core machine can serve and
pipeline at once, near 40 requests/s), plus Oura's per-token limit of 5,000 per 5 minutes. The pipeline
starts from its default configuration (5,000 per 5 minutes), so it has to learn the limit from the 429s.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import harness
from common import BACKFILL_START, NIGHTLY_DAYS, RUNNER, fmt_s, run_worker

from oura_assets.config import OAUTH_SCOPES
from oura_assets.domain import DOCUMENT_COLLECTIONS, missing_scope
from oura_assets.oura.client import OuraClient, heartrate_windows, parse_instant
from oura_assets.simulator import RateLimit, SimulatorServer
from oura_assets.simulator.config import SimulatorConfig
from oura_assets.sync import heartrate_window
from oura_assets_tests import support

SIZES = {
    "full": {
        "sync_patients": 500,
        "sync_baseline_patients": 10,
        "host_ceiling_patients": 200,
        "two_runs_nightly_patients": 150,
        "two_runs_backfill_patients": 16,
        "two_runs_backfill_days": 60,
        "economy_days": 365,
        "economy_per_day_stride": 1,
        "newcomer_backfill_patients": 8,
    },
    "quick": {
        "sync_patients": 100,
        "sync_baseline_patients": 3,
        "host_ceiling_patients": 20,
        "two_runs_nightly_patients": 30,
        "two_runs_backfill_patients": 6,
        "two_runs_backfill_days": 30,
        "economy_days": 365,
        "economy_per_day_stride": 15,
        "newcomer_backfill_patients": 3,
    },
}

APP_LIMIT = RateLimit(20, 1.0)
TOKEN_LIMIT = RateLimit(5000, 300.0)
LIMIT_PER_S = APP_LIMIT.limit / APP_LIMIT.window_s
LATENCY_MS = 300
# The newcomer's sync: what the connection API queues when a patient connects (api/service.py).
INITIAL_SYNC_DAYS = 30
# A full-size nightly arm alone sends ~7,000 requests at the limit (~6.5 minutes); leave room on a busy host.
SYNC_WORKER_TIMEOUT_S = 1800
# A year of history ending at the simulator's frozen data clock (harness.DATA_NOW).
YEAR_END = date(2024, 7, 13)
_PATIENT_DONE = re.compile(r"^patient \d+ of \d+ \((?P<patient>[^)]+)\)")


# --- the child process: one sync run -----------------------------------------------------------------------


class _Stamps:
    """Wraps the run's budget (or none, for the seed's way) and notes when each request went and how Oura
    answered; appended line by line to a file too, so a run stopped from outside still tells what it sent."""

    def __init__(self, budget: Any | None, path: Path | None) -> None:
        self.budget = budget
        self.sent: list[tuple[float, int]] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._file = path.open("a", buffering=1) if path is not None else None

    def acquire(self) -> None:
        if self.budget is not None:
            self.budget.acquire()
        self._local.sent_at = time.time()

    def observe(self, status: int, headers: Any, seconds: float) -> None:
        if self.budget is not None:
            self.budget.observe(status, headers, seconds)
        stamp = (self._local.sent_at, status)
        with self._lock:
            self.sent.append(stamp)
            if self._file is not None:
                self._file.write(f"{stamp[0]!r} {status}\n")


class _Progress:
    """The run's log: when each patient's result was recorded (its data committed), by patient id."""

    def __init__(self) -> None:
        self.done: dict[str, float] = {}
        self.warnings: list[str] = []
        self.not_synced: list[str] = []

    def info(self, msg: str) -> None:
        match = _PATIENT_DONE.match(msg)
        if match:
            self.done[match["patient"]] = time.time()
            if "): success (" not in msg:
                self.not_synced.append(msg[:300])  # a patient that did not sync fully, with its error codes

    def warning(self, msg: str) -> None:
        self.warnings.append(msg[:300])

    def error(self, msg: str) -> None:
        print(msg, file=sys.stderr)


def _hold_times(warehouse_class: Any) -> list[float]:
    """Notes how long each warehouse block of this process held the writer lock (open, work, close)."""
    held: list[float] = []
    connect = warehouse_class.connect

    @contextlib.contextmanager
    def timed_connect(self: Any, purpose: str, timeout_s: float | None = None) -> Iterator[Any]:
        with connect(self, purpose, timeout_s) as conn:
            began = time.perf_counter()
            try:
                yield conn
            finally:
                held.append(time.perf_counter() - began)

    warehouse_class.connect = timed_connect
    return held


def worker_sync(spec: dict[str, Any]) -> dict[str, Any]:
    """One sync run in this (child) process: `mode` "budget" is the production wiring, "sequential" the
    seed's (one patient at a time, no shared budget)."""
    import dataclasses
    import logging

    from oura_assets import coordination
    from oura_assets import warehouse as wh
    from oura_assets.config import load_settings
    from oura_assets.defs.resources import OuraResource
    from oura_assets.sync import RefetchPolicy, sync_patients
    from oura_assets.tokens import PatientTokens

    logging.getLogger("httpx").setLevel(logging.WARNING)
    held = _hold_times(wh.Warehouse)
    settings = load_settings(require=("oauth", "tokens"))
    store = wh.Warehouse.from_settings(settings)
    stamps_path = Path(spec["stamps"]) if spec.get("stamps") else None
    # The pipeline paces from its default configuration (Oura's documented limit) unless the arm says
    # otherwise: the host-ceiling arm lifts it, so that only the host bounds that arm.
    pacing = spec.get("pacing")
    oura = OuraResource(**({"rate_limit": pacing[0], "rate_limit_window_s": pacing[1]} if pacing else {}))
    progress = _Progress()
    started: dict[str, float] = {}
    targets: list[tuple[float, int]] = []
    with oura.session() as session:
        sequential = spec["mode"] == "sequential"
        stamps = _Stamps(None if sequential else session.budget, stamps_path)
        stamped = dataclasses.replace(session, budget=stamps)

        def client_for(patient_id: str) -> OuraClient:
            started[patient_id] = time.time()
            if not sequential:
                return stamped.client_for(patient_id, store)
            tokens = PatientTokens(
                patient_id=patient_id,
                warehouse=store,
                cipher=session.cipher,
                oauth_app=session.oauth,
                lock_dir=settings.lock_dir,
                coordination=coordination.from_settings(settings),
            )
            return OuraClient(
                settings.api_base_url, tokens, http=session.http, retry=session.retry, budget=stamps
            )  # type: ignore[arg-type]

        def concurrency(cap: int) -> int:
            target = session.budget.suggested_workers(cap)
            if not targets or targets[-1][1] != target:
                targets.append((time.time(), target))
            return target

        began = time.time()
        cpu_began = time.process_time()
        outcome = sync_patients(
            patients=spec["patients"],
            client_for=client_for,
            warehouse=store,
            start=date.fromisoformat(spec["start"]),
            end=date.fromisoformat(spec["end"]),
            run_id=spec["run_id"],
            max_workers=1 if sequential else oura.max_concurrent_patients,
            concurrency=None if sequential else concurrency,
            purpose=f"bench {spec['run_id']}",
            progress=progress,  # type: ignore[arg-type]
            refetch=RefetchPolicy(passes=oura.refetch_passes, cool_down_s=oura.refetch_cool_down_s),
        )
        return {
            "began": began,
            "finished": time.time(),
            "cpu_s": time.process_time() - cpu_began,
            "sent": stamps.sent,
            "rate_limited": sum(status == 429 for _, status in stamps.sent),
            "statuses": {r.patient_id: r.status for r in outcome.results},
            "started": started,
            "done": progress.done,
            "workers": targets,
            "warnings": progress.warnings[:20],
            "not_synced": progress.not_synced[:20],
            "patient_s": sorted(progress.done[p] - started[p] for p in progress.done if p in started),
            "limit_learned": list(session.budget.limit()),
            "warehouse_held_s": sum(held),
            "warehouse_blocks": len(held),
        }


# --- the parent: a simulated Oura, patients, runs ----------------------------------------------------------


@dataclass
class World:
    server: SimulatorServer
    env: dict[str, str]
    workdir: Path

    def spec(
        self,
        name: str,
        patients: list[str],
        start: date,
        end: date,
        mode: str = "budget",
        pacing: tuple[int, float] | None = None,
    ) -> dict:
        return {
            "pacing": pacing,
            "kind": "sync",
            "mode": mode,
            "run_id": name,
            "patients": patients,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "stamps": str(self.workdir / f"{name}.stamps"),
        }

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        return run_worker(spec, self.env, self.workdir, SYNC_WORKER_TIMEOUT_S)

    def spawn(self, spec: dict[str, Any]) -> subprocess.Popen[str]:
        log = (self.workdir / f"worker-{spec['run_id']}.log").open("w")
        return subprocess.Popen(
            [sys.executable, str(RUNNER), "--worker", json.dumps(spec)],
            env=harness.child_environ(self.env),
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )

    def collect(self, process: subprocess.Popen[str], name: str) -> dict[str, Any]:
        out, _ = process.communicate(timeout=SYNC_WORKER_TIMEOUT_S)
        if process.returncode != 0:
            tail = (self.workdir / f"worker-{name}.log").read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError(f"worker {name} exited {process.returncode}:\n" + "\n".join(tail))
        return json.loads(out.strip().splitlines()[-1])

    def sent_so_far(self, name: str) -> int:
        path = self.workdir / f"{name}.stamps"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def answered(self) -> dict[str, int]:
        """Oura data requests the simulator answered since the last reset: served (2xx) and 429."""
        served = limited = 0
        for route, counts in self.server.control.stats()["requests"].items():
            if route.startswith("GET /v2/"):
                served += sum(n for status, n in counts.items() if status.startswith("2"))
                limited += counts.get("429", 0)
        return {"served": served, "rate_limited": limited}


@contextlib.contextmanager
def world(patients: list[str], *, latency_ms: float = LATENCY_MS, limited: bool = True) -> Iterator[World]:
    """A simulator with Oura's limits (or none) and latency, and `patients` connected to a fresh warehouse."""
    with tempfile.TemporaryDirectory(prefix="oura-bench-sync-") as tmp:
        workdir = Path(tmp)
        limits = (
            {"app_rate_limit": APP_LIMIT, "token_rate_limit": TOKEN_LIMIT}
            if limited
            else {"app_rate_limit": RateLimit(1_000_000, 300.0)}
        )
        server = harness.start_simulator(**limits)
        try:
            env = harness.pipeline_env(server.url, workdir / "warehouse.duckdb")
            with harness.applied_env(env) as settings:
                support.connect_patient(settings, patients[0], learn_oura_user_id=False)  # creates the schema
                with ThreadPoolExecutor(4) as pool:  # the OAuth round trips overlap; the writes take turns
                    list(
                        pool.map(
                            lambda p: support.connect_patient(settings, p, learn_oura_user_id=False),
                            patients[1:],
                        )
                    )
            server.control.set_faults(latency_ms=latency_ms)
            server.control.reset_stats()
            yield World(server, env, workdir)
        finally:
            server.stop()


def _served(report: dict[str, Any]) -> list[float]:
    return sorted(sent for sent, status in report["sent"] if status != 429)


def _rate(report: dict[str, Any]) -> dict[str, float]:
    """Served requests per second from the run's first request to its last, and the learning period."""
    sent = sorted(t for t, _ in report["sent"])
    served = _served(report)
    span = sent[-1] - sent[0] if len(sent) > 1 else float("nan")
    limited = [t for t, status in report["sent"] if status == 429]
    return {
        "requests": len(sent),
        "served": len(served),
        "rate_limited": len(limited),
        "span_s": span,
        "served_per_s": len(served) / span,
        "last_429_after_s": (max(limited) - sent[0]) if limited else 0.0,
    }


def _all_ok(*reports: dict[str, Any]) -> bool:
    return all(set(r["statuses"].values()) <= {"success"} and r["statuses"] for r in reports)


class _Stalls:
    """Pauses of the simulator's process while a run is measured: a thread that sleeps 10 ms and notes every
    wake-up more than 50 ms late (a GC pause or a thread holding the GIL stops it as it stops the server's
    event loop), and each gen-2 collection's length. Quoted beside the 429s' arrival times, so a burst of
    429s can be laid against what the simulator was doing then."""

    def __init__(self) -> None:
        self.late: list[tuple[float, float]] = []
        self.gen2: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._gc_started = 0.0

    def _beat(self) -> None:
        while not self._stop.is_set():
            before = time.perf_counter()
            time.sleep(0.01)
            late = time.perf_counter() - before - 0.01
            if late > 0.05:
                self.late.append((time.time(), round(late, 3)))

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gen2.append((time.time(), round(time.perf_counter() - self._gc_started, 3)))

    def __enter__(self) -> _Stalls:
        gc.callbacks.append(self._gc)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        gc.callbacks.remove(self._gc)

    def report(self, started: float, limited_at: list[float]) -> dict[str, Any]:
        """Times relative to `started` (epoch seconds): the stalls, and the 429s with the longest stall in the
        second before each."""

        def before(at: float) -> float:
            return max((d for t, d in self.late if at - 1.0 <= t <= at + 0.1), default=0.0)

        return {
            "late_wakeups": [(round(t - started, 2), d) for t, d in self.late],
            "gen2_collections": [(round(t - started, 2), d) for t, d in self.gen2],
            "rate_limited_at": [(round(t - started, 2), before(t)) for t in limited_at],
        }


# --- nightly throughput ------------------------------------------------------------------------------------


def bench_nightly(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    n, k = size["sync_patients"], size["sync_baseline_patients"]
    start, end = BACKFILL_START, BACKFILL_START + timedelta(days=NIGHTLY_DAYS - 1)
    with world([f"nightly-{i}" for i in range(n)]) as w:
        simulator_cpu = (
            time.process_time()
        )  # this process serves the simulator and does nothing else meanwhile
        began = time.time()
        with _Stalls() as stalls:
            candidate = w.run(w.spec("nightly", [f"nightly-{i}" for i in range(n)], start, end))
        candidate_simulator_cpu = time.process_time() - simulator_cpu
        oura_saw = w.answered()
        limited_at = [at for at, status in w.server.control.answered() if status == "429"]
        simulator_stalls = stalls.report(began, limited_at)
    with world([f"sequential-{i}" for i in range(k)]) as w:
        baseline = w.run(
            w.spec("sequential", [f"sequential-{i}" for i in range(k)], start, end, "sequential")
        )
    # The host's own ceiling: the same run with no latency and no limit, so only our side (and the
    # simulator, on the same 2 cores) bounds it. Above the limit, the limit is what bounds a run.
    h = size["host_ceiling_patients"]
    with world([f"ceiling-{i}" for i in range(h)], latency_ms=0, limited=False) as w:
        simulator_cpu = time.process_time()
        # Paced for a limit no host reaches: otherwise the default 5,000 per 5 minutes (15/s) bounds it.
        unlimited = (1_000_000, 1.0)
        report = w.run(w.spec("ceiling", [f"ceiling-{i}" for i in range(h)], start, end, pacing=unlimited))
        simulator_cpu = time.process_time() - simulator_cpu
    ceiling = _rate(report)
    # CPU per request, which a loaded machine does not inflate the way it does wall time. In production the
    # simulator's share is Oura's; one pipeline process is bound by one core (its Python work holds the GIL).
    ceiling["pipeline_cpu_ms_per_request"] = 1000 * report["cpu_s"] / ceiling["served"]
    ceiling["simulator_cpu_ms_per_request"] = 1000 * simulator_cpu / ceiling["served"]
    ceiling["pipeline_requests_per_cpu_s"] = ceiling["served"] / report["cpu_s"]
    cand, base = _rate(candidate), _rate(baseline)
    # CPU per request at the limit: what 20 requests/s cost the pipeline's process and the simulator's.
    cand["pipeline_cpu_ms_per_request"] = 1000 * candidate["cpu_s"] / cand["requests"]
    cand["simulator_cpu_ms_per_request"] = 1000 * candidate_simulator_cpu / cand["requests"]
    fraction = cand["served_per_s"] / LIMIT_PER_S
    speedup = cand["served_per_s"] / base["served_per_s"]
    share_429 = cand["rate_limited"] / cand["requests"]
    # The tail: once the last patient has started, fewer than the needed patients are left in flight.
    last_start = max(candidate["started"].values())
    sustained = sum(t <= last_start for t in _served(candidate)) / (last_start - min(_served(candidate)))
    label = f"nightly {n} patients x {NIGHTLY_DAYS} d, {LATENCY_MS} ms, limit {LIMIT_PER_S:g}/s"
    rows += [
        [label, "served requests/s (fraction of the limit)",
         f"{base['served_per_s']:.2f} ({k} patients, sequential)", f"{cand['served_per_s']:.2f}",
         f"{fraction:.0%} of the limit"],
        [label, "speedup per request vs sequential", "1x", f"{speedup:.1f}x",
         f"ceiling {LIMIT_PER_S / base['served_per_s']:.1f}x"],
        [label, "429s (share; last one after)", "0", f"{cand['rate_limited']} ({share_429:.1%}; "
         f"{cand['last_429_after_s']:.1f} s)", "while learning" if cand["last_429_after_s"] < 10 else "LATE"],
        [label, "rate until the last patient started", "", f"{sustained:.2f}/s",
         f"{sustained / LIMIT_PER_S:.0%}"],
        [label, "wall time of the fetch", fmt_s(base["span_s"]), fmt_s(cand["span_s"]), ""],
        [label, "CPU per request: simulator / pipeline", f"{cand['simulator_cpu_ms_per_request']:.1f} ms",
         f"{cand['pipeline_cpu_ms_per_request']:.1f} ms",
         f"pipeline at the limit: {cand['pipeline_cpu_ms_per_request'] * LIMIT_PER_S / 1000:.2f} core"],
        [f"host ceiling: {h} patients x {NIGHTLY_DAYS} d, no latency, no limit", "served requests/s", "",
         f"{ceiling['served_per_s']:.1f}", f"{ceiling['served_per_s'] / LIMIT_PER_S:.1f}x the limit"],
        [f"host ceiling: {h} patients x {NIGHTLY_DAYS} d, no latency, no limit",
         "CPU per request: simulator / pipeline", f"{ceiling['simulator_cpu_ms_per_request']:.1f} ms",
         f"{ceiling['pipeline_cpu_ms_per_request']:.1f} ms",
         f"pipeline: {ceiling['pipeline_requests_per_cpu_s']:.0f} req per CPU-s"],
    ]  # fmt: skip
    ok = _all_ok(candidate, baseline) and oura_saw["rate_limited"] == cand["rate_limited"]
    return {
        "what": "sync_patients with the host-wide budget and adaptive concurrency vs one patient at a time",
        "params": {
            "patients": n,
            "baseline_patients": k,
            "days": NIGHTLY_DAYS,
            "latency_ms": LATENCY_MS,
            "app_limit": [APP_LIMIT.limit, APP_LIMIT.window_s],
        },
        "baseline": {"name": "sequential (the seed's way)", **base},
        "candidate": {
            "name": "shared budget, adaptive concurrency",
            **cand,
            "workers": candidate["workers"],
            "patient_s_median": statistics.median(candidate["patient_s"]),
            "warehouse_held_s": candidate["warehouse_held_s"],
            "warehouse_blocks": candidate["warehouse_blocks"],
            "warnings": candidate["warnings"],
            "not_synced": {"candidate": candidate["not_synced"], "baseline": baseline["not_synced"]},
            "limit_learned": candidate["limit_learned"],
            "sustained_per_s": sustained,
            "oura_saw": oura_saw,
            "simulator_stalls": simulator_stalls,
        },
        "host_ceiling": {"patients": h, **ceiling},
        "ok": ok,
        "check": "every patient synced fully in both arms; the client's 429 count is the simulator's",
        "results": {
            "sync_fraction_of_limit": round(fraction, 3),
            "sync_speedup_vs_sequential": round(speedup, 2),
            "sync_pipeline_cpu_ms_per_request": round(cand["pipeline_cpu_ms_per_request"], 2),
            "sync_simulator_cpu_ms_per_request": round(cand["simulator_cpu_ms_per_request"], 2),
        },
    }


# --- two runs at once --------------------------------------------------------------------------------------


def bench_two_runs(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    nightly = [f"nightly-{i}" for i in range(size["two_runs_nightly_patients"])]
    backfill = [f"backfill-{i}" for i in range(size["two_runs_backfill_patients"])]
    days = size["two_runs_backfill_days"]
    n_start, n_end = BACKFILL_START, BACKFILL_START + timedelta(days=NIGHTLY_DAYS - 1)
    b_start, b_end = BACKFILL_START - timedelta(days=days), BACKFILL_START - timedelta(days=1)
    with world(nightly + backfill) as w:
        processes = {
            "backfill": w.spawn(w.spec("backfill", backfill, b_start, b_end)),
            "nightly": w.spawn(w.spec("nightly", nightly, n_start, n_end)),
        }
        reports = {name: w.collect(p, name) for name, p in processes.items()}
        oura_saw = w.answered()
    sent = sorted(t for r in reports.values() for t, _ in r["sent"])
    served = sorted(t for r in reports.values() for t in _served(r))
    # Both runs in flight: from the later first request to the earlier last one.
    both = (max(min(t for t, _ in r["sent"]) for r in reports.values()),
            min(max(t for t, _ in r["sent"]) for r in reports.values()))  # fmt: skip
    together = sum(both[0] <= t <= both[1] for t in served) / (both[1] - both[0])
    overall = len(served) / (sent[-1] - sent[0])
    limited = sum(r["rate_limited"] for r in reports.values())
    share = limited / len(sent)
    per_run = {name: sum(both[0] <= t <= both[1] for t in _served(r)) / (both[1] - both[0])
               for name, r in reports.items()}  # fmt: skip
    label = f"two runs: nightly {len(nightly)} p x {NIGHTLY_DAYS} d + backfill {len(backfill)} p x {days} d"
    rows += [
        [label, "served requests/s while both run", f"nightly {per_run['nightly']:.1f} + backfill "
         f"{per_run['backfill']:.1f}", f"{together:.2f}", f"{together / LIMIT_PER_S:.0%} of the limit"],
        [label, "served requests/s, first to last request", "", f"{overall:.2f}",
         f"{overall / LIMIT_PER_S:.0%}"],
        [label, "429s (share of requests)", "", f"{limited} of {len(sent)}", f"{share:.2%}"],
    ]  # fmt: skip
    return {
        "what": "a nightly run and a backfill in two processes, one application limit, one host-wide budget",
        "params": {
            "nightly_patients": len(nightly),
            "backfill_patients": len(backfill),
            "backfill_days": days,
            "latency_ms": LATENCY_MS,
            "app_limit": [APP_LIMIT.limit, APP_LIMIT.window_s],
        },
        "candidate": {
            "together_per_s": together,
            "overall_per_s": overall,
            "per_run_per_s": per_run,
            "overlap_s": both[1] - both[0],
            "requests": len(sent),
            "rate_limited": limited,
            "oura_saw": oura_saw,
            "runs": {name: _rate(r) for name, r in reports.items()},
            "not_synced": {name: r["not_synced"] for name, r in reports.items()},
        },
        "ok": _all_ok(*reports.values()) and oura_saw["rate_limited"] == limited,
        "check": "every patient of both runs synced fully; the clients' 429 count is the simulator's",
        "results": {
            "two_runs_fraction_of_limit": round(together / LIMIT_PER_S, 3),
            "two_runs_429_share": round(share, 4),
        },
    }


# --- request economy ---------------------------------------------------------------------------------------


# What a patient who granted the app's scopes (`config.OAUTH_SCOPES`) shares: `sync_patient` skips the rest (a
# collection outside them, `daily_spo2`, answers 403 at Oura).
SHARED_COLLECTIONS = tuple(c for c in DOCUMENT_COLLECTIONS if missing_scope(c, OAUTH_SCOPES) is None)
# The page sizes the benchmark's simulator serves (its default configuration).
PAGES = SimulatorConfig()


def _fetch(client: OuraClient, start: date, end: date) -> tuple[dict[str, int], list[datetime]]:
    """What `sync_patient` fetches for local days [start, end]: every document collection the patient shares,
    then heart rate."""
    items = {c: len(client.documents(c, start, end).documents) for c in SHARED_COLLECTIONS}
    samples = client.heartrate(*heartrate_window(start, end))
    instants = [parse_instant(s["timestamp"]) for s in samples]
    return items, [i for i in instants if i is not None]


def _lower_bound(items: dict[str, int], instants: list[datetime], start: date, end: date) -> int:
    """Fewest requests that can return this data: per collection ceil(items / page) (at least one request),
    heart rate ceil(samples / page) per 30-day window Oura allows."""
    bound = sum(max(1, math.ceil(n / PAGES.page_size_for(c))) for c, n in items.items())
    for low, high in heartrate_windows(*heartrate_window(start, end)):
        n = sum(low <= i < high for i in instants)
        bound += max(1, math.ceil(n / PAGES.page_size_for("heartrate")))
    return bound


def bench_economy(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    days, stride = size["economy_days"], size["economy_per_day_stride"]
    start, end = YEAR_END - timedelta(days=days - 1), YEAR_END
    with world(["economy"], latency_ms=0, limited=False) as w, harness.applied_env(w.env) as settings:
        from oura_assets import warehouse as wh
        from oura_assets.oura.oauth import OuraOAuthApp
        from oura_assets.tokens import PatientTokens, TokenCipher

        tokens = PatientTokens(
            patient_id="economy",
            warehouse=wh.Warehouse.from_settings(settings),
            cipher=TokenCipher(settings.token_keys),
            oauth_app=OuraOAuthApp.from_settings(settings),
            lock_dir=settings.lock_dir,
        )
        with OuraClient(settings.api_base_url, tokens) as client:
            items, instants = _fetch(client, start, end)
            single = w.answered()["served"]
            bound = _lower_bound(items, instants, start, end)
            w.server.control.reset_stats()
            sampled = [start + timedelta(days=i) for i in range(0, days, stride)]
            for day in sampled:
                _fetch(client, day, day)
            per_day = w.answered()["served"] * days / len(sampled)
    vs_bound, vs_per_day = single / bound, per_day / single
    label = f"economy: 1 patient x {days} d"
    per_day_note = "measured" if stride == 1 else f"{len(sampled)} days measured, scaled"
    rows += [
        [label, "requests: lower bound / single run", str(bound), str(single), f"{vs_bound:.3f}x the bound"],
        [label, f"requests: per-day fetch ({per_day_note}) / single run", f"{per_day:,.0f}", str(single),
         f"{vs_per_day:.1f}x fewer"],
    ]  # fmt: skip
    return {
        "what": "requests of one ranged fetch of a year vs the lower bound and vs fetching day by day",
        "params": {
            "days": days,
            "start": start.isoformat(),
            "per_day_days_measured": len(sampled),
            "page_sizes": {c: PAGES.page_size_for(c) for c in (*SHARED_COLLECTIONS, "heartrate")},
        },
        "candidate": {"requests": single, "items": items, "heartrate_samples": len(instants)},
        "lower_bound": bound,
        "per_day_requests": per_day,
        "ok": single >= bound and sum(items.values()) > 0 and instants != [],
        "check": "the single run made at least the lower bound of requests and got data from every route",
        "results": {
            "request_economy_vs_bound": round(vs_bound, 3),
            "request_ratio_vs_per_day": round(vs_per_day, 1),
        },
    }


# --- a new patient during a backfill -----------------------------------------------------------------------


def bench_newcomer(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    backfill = [f"backfill-{i}" for i in range(size["newcomer_backfill_patients"])]
    n_start, n_end = YEAR_END - timedelta(days=INITIAL_SYNC_DAYS - 1), YEAR_END
    with world([*backfill, "newcomer-alone", "newcomer"]) as w:
        alone = w.run(w.spec("alone", ["newcomer-alone"], n_start, n_end))
        long = w.spawn(w.spec("backfill", backfill, YEAR_END - timedelta(days=364), YEAR_END))
        try:
            deadline = time.monotonic() + 120
            # The backfill has learned the limit and spends the whole budget before the newcomer connects.
            while w.sent_so_far("backfill") < 4 * LIMIT_PER_S:
                if long.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the backfill stopped (or never started) before the newcomer came")
                time.sleep(0.2)
            during = w.run(w.spec("newcomer", ["newcomer"], n_start, n_end))
        finally:
            long.terminate()
            long.communicate(timeout=60)
        backfill_sent = [
            float(line.split()[0]) for line in (w.workdir / "backfill.stamps").read_text().splitlines()
        ]
    first_alone = alone["done"]["newcomer-alone"] - alone["began"]
    first_during = during["done"]["newcomer"] - during["began"]
    window = (during["began"], during["done"]["newcomer"])
    backfill_meanwhile = sum(window[0] <= t <= window[1] for t in backfill_sent)
    label = f"newcomer's {INITIAL_SYNC_DAYS}-day sync during a {len(backfill)}-patient 1-year backfill"
    rows += [
        [label, "time to first data (sync start to rows committed)", f"{fmt_s(first_alone)} alone",
         fmt_s(first_during), f"{first_during / first_alone:.2f}x the time alone"],
        [label, "requests meanwhile: newcomer / backfill", "",
         f"{len(during['sent'])} / {backfill_meanwhile}",
         "backfill kept going" if backfill_meanwhile else "BACKFILL STALLED"],
    ]  # fmt: skip
    return {
        "what": "a new patient's initial sync in its own process while a year's backfill runs in another",
        "params": {
            "backfill_patients": len(backfill),
            "initial_sync_days": INITIAL_SYNC_DAYS,
            "latency_ms": LATENCY_MS,
        },
        "baseline": {
            "name": "the same sync alone",
            "first_data_s": first_alone,
            "requests": len(alone["sent"]),
        },
        "candidate": {
            "name": "during the backfill",
            "first_data_s": first_during,
            "requests": len(during["sent"]),
            "backfill_requests_meanwhile": backfill_meanwhile,
        },
        "ok": _all_ok(alone, during) and backfill_meanwhile > 0,
        "check": "the newcomer synced fully while the backfill kept sending",
        "results": {"new_patient_first_data_s_during_backfill": round(first_during, 1)},
    }
