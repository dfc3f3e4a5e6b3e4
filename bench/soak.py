"""The soak: many simulated nights of the nightly sync under faults, revisions, late rings and kill -9,
checked against the simulator's ground truth.

    .venv/bin/python bench/soak.py --quick     # 5 nights x 20 patients (a few minutes)
    .venv/bin/python bench/soak.py             # 30 nights x 100 patients (make soak)

One simulator runs in this process for the whole soak (it holds the grants, so tokens live across nights).
Each night moves its data clock (`POST /_sim/clock`) to 03:00 UTC (plus a few random minutes) of the next
day, sets the night's faults (`POST /_sim/faults`: 5xx, dropped connections, a per-token rate limit, and
some patients' access tokens expired so the run has to refresh them), and runs the range the schedule
`sync_wearables_daily` asks for (yesterday plus the lookback) in a child process, as one ranged run. On some
nights the child is SIGKILLed at a random moment of its run; the next night must recover.

At the end every patient's raw documents are compared with what the simulator's data functions say Oura
held (see `check_documents`): lost, duplicated and stale documents must be zero, and so must connections
that are no longer `active` (the simulator never rejects a refresh on purpose here). Writes
bench/results/soak-latest.json (or `--out`) and prints a summary; exits 1 when a goal-zero figure is not zero.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import harness
import httpx

from oura_assets import domain
from oura_assets.simulator import ClientRegistration, SimulatorConfig, SimulatorServer
from oura_assets.simulator.config import RateLimit
from oura_assets.simulator.data.queries import documents_for_day
from oura_assets_tests import support

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

SIZES = {
    "full": {"nights": 30, "patients": 100},
    "quick": {"nights": 5, "patients": 20},
}
# The first night's schedule tick; the nightly range ends the day before each tick.
FIRST_NIGHT = date(2024, 6, 1)
LOOKBACK_DAYS = 3
# 5% of data requests fail at random: 3% answer 500/502/503, 2% drop the connection mid-response. On top, a
# tight per-token rate limit answers 429 with Retry-After when one patient's requests come too fast.
FAULTS = {
    "error_rate": 0.03,
    "drop_rate": 0.02,
    "rate_limit": {"limit": 8, "window_s": 2.0, "tier": "access_token"},
}
# Thirty simulated nights pass in minutes of wall time: Oura's application limit (5,000 requests per
# 5 minutes) would measure the compression, not the pipeline. So the simulator allows far more, and the run
# is told so (`OuraResource.rate_limit`), as a deployment is told its application's limit: paced at 5,000
# per 5 minutes (15 requests/s), a night's ~2,000 requests alone would take over two minutes.
APP_RATE_LIMIT = RateLimit(1_000_000, 300.0)
# Share of patients whose access tokens the simulator expires before a night (the run refreshes them).
EXPIRE_SHARE = 0.25
# Share of nights (never the last) on which the run is killed.
KILL_SHARE = 0.2
NIGHT_TIMEOUT_S = 1800
RUN_START = "SOAK-RUN-START"


# --- the child: one night's run ---------------------------------------------------------------------------


def run_night(start: date, end: date) -> dict[str, Any]:
    """One ranged run of the sync job over [start, end] in this process (the child), as the schedule asks."""
    import logging

    import dagster as dg

    from oura_assets.definitions import defs as load_defs

    logging.getLogger("httpx").setLevel(logging.WARNING)
    definitions = load_defs()
    definitions.resolve_job_def(support.SYNC_JOB)
    instance = dg.DagsterInstance.ephemeral()
    print(RUN_START, flush=True)
    began = time.perf_counter()
    oura = {"rate_limit": APP_RATE_LIMIT.limit, "rate_limit_window_s": APP_RATE_LIMIT.window_s}
    result = support.run_sync(
        start,
        end,
        definitions=definitions,
        instance=instance,
        run_config={"resources": {"oura": {"config": oura}}},
    )
    run = instance.get_run_by_id(result.run_id)
    tags = {k: v for k, v in (run.tags if run else {}).items() if k.startswith("oura_assets/")}
    return {
        "run_id": result.run_id,
        "success": result.success,
        "run_s": time.perf_counter() - began,
        "tags": tags,
        "failures": [text[:300] for text in support.failures(result)][:5],
    }


# --- the parent: nights, kills, checks --------------------------------------------------------------------


@dataclass
class Night:
    index: int
    clock: datetime
    start: date
    end: date
    kill_planned: bool
    killed: bool = False
    kill_after_s: float | None = None
    wall_s: float = 0.0
    run: dict[str, Any] = field(default_factory=dict)
    sync_results: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return not self.killed and bool(self.run)


def _post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(url + path, json=body, timeout=10)
    answer.raise_for_status()
    return answer.json()


def _fault_counts(stats: dict[str, Any]) -> dict[str, int]:
    statuses: Counter[str] = Counter()
    for route, counts in stats["requests"].items():
        if " /v2/" in route:
            statuses.update(counts)
    return {
        "data_requests": sum(statuses.values()),
        "http_5xx_injected": stats["injected_errors"],
        "dropped_connections": stats["dropped"],
        "http_429": stats["rate_limited"],
        "refresh_grants": stats["refresh_grants"],
        "spent_refresh_reuse": stats["spent_refresh_reuse"],
        "refresh_rejected": stats["refresh_rejected"],
    }


def _spawn(night: Night, env: dict[str, str], workdir: Path) -> subprocess.Popen[str]:
    spec = json.dumps({"start": night.start.isoformat(), "end": night.end.isoformat()})
    log = (workdir / f"night-{night.index:02d}.log").open("w")
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--night", spec],
        env=harness.child_environ(env),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,  # its own process group: the kill takes anything it started with it
    )


def _wait_for_start(child: subprocess.Popen[str], timeout_s: float) -> bool:
    assert child.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], 1.0)
        if ready:
            line = child.stdout.readline()
            if not line:
                return False
            if line.strip() == RUN_START:
                return True
        elif child.poll() is not None:
            return False
    return False


def run_one_night(
    night: Night, env: dict[str, str], workdir: Path, rng: random.Random, typical_s: float
) -> None:
    began = time.perf_counter()
    child = _spawn(night, env, workdir)
    try:
        started = _wait_for_start(child, NIGHT_TIMEOUT_S)
        if night.kill_planned and started:
            # A random point of the run itself (fetching, refreshing, writing), from its first request to
            # about when a run of this size usually ends.
            night.kill_after_s = rng.uniform(0.0, typical_s)
            try:
                child.wait(timeout=night.kill_after_s)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                night.killed = True
        out, _ = child.communicate(timeout=NIGHT_TIMEOUT_S)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    night.wall_s = time.perf_counter() - began
    if night.killed:
        return
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        tail = (workdir / f"night-{night.index:02d}.log").read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError(f"night {night.index} exited {child.returncode}:\n" + "\n".join(tail))
    night.run = json.loads(lines[-1])


def _sync_results(warehouse: Path, run_id: str) -> dict[str, int]:
    rows = support.query(
        warehouse,
        "SELECT status, count(*) FROM patient_graph.sync_results WHERE run_id = ? GROUP BY status",
        [run_id],
    )
    return {status: n for status, n in rows}


def check_documents(
    warehouse: Path, patients: list[support.ConnectedPatient], nights: list[Night]
) -> dict[str, Any]:
    """Every patient's raw documents against the simulator's truth.

    A day's truth is what Oura held at the last *completed* run whose range covered the day (its last chance
    to be fetched): a document there but not in the raw table is **lost**; a raw version that differs from
    both that truth and any later one is **stale**. What changed only after the day's last covering run
    (a revision or a ring that synced after the lookback window closed, or a window cut short by a kill) is
    counted apart as `after_last_run`: by design, not a loss. `final_*` figures compare with the truth at
    the final clock, as the brief words it; they differ from the goal-zero ones only by `after_last_run`.

    Oura serves a collection only to a token holding its scope (`domain.COLLECTION_SCOPES`; 403 otherwise),
    so a collection the patient did not grant (`wearable_connections.scopes`; the app asks for
    `config.OAUTH_SCOPES`, which leaves out `spo2Daily`) is not truth for that patient: its documents are
    counted as `not_granted`, and any raw row of it would be `unexpected`.
    """
    completed = [n for n in nights if n.completed]
    last_clock: dict[date, datetime] = {}
    first_clock: dict[date, datetime] = {}
    for night in completed:
        day = night.start
        while day <= night.end:
            last_clock[day] = night.clock
            first_clock.setdefault(day, night.clock)
            day += timedelta(days=1)
    final_clock = max(n.clock for n in nights)
    clocks = sorted({n.clock for n in nights})
    raw: dict[tuple[str, str, str], list[Any]] = {}
    revisions_seen = 0
    for collection in domain.DOCUMENT_COLLECTIONS:
        for patient_id, doc_id, document, revision in support.query(
            warehouse,
            f"SELECT patient_id, id, document, revision FROM oura_raw.{collection}",  # noqa: S608
        ):
            raw.setdefault((collection, patient_id, doc_id), []).append(json.loads(document))
            revisions_seen += revision > 0
    granted = {
        patient_id: tuple(scopes or ())
        for patient_id, scopes in support.query(
            warehouse, "SELECT patient_id, scopes FROM patient_graph.wearable_connections"
        )
    }
    figures = Counter()
    lost_by_collection: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}

    def note(kind: str, text: str) -> None:
        figures[kind] += 1
        examples.setdefault(kind, [])
        if len(examples[kind]) < 5:
            examples[kind].append(text)

    def normal(doc: dict[str, Any]) -> Any:
        return json.loads(json.dumps(doc, default=str))

    expected: set[tuple[str, str, str]] = set()
    for patient in patients:
        user = patient.ring_user
        for day, clock in sorted(last_clock.items()):
            for collection in domain.DOCUMENT_COLLECTIONS:
                if domain.missing_scope(collection, granted.get(patient.patient_id)):
                    figures["not_granted"] += len(documents_for_day(user, collection, day, final_clock))
                    continue
                window = {d["id"]: normal(d) for d in documents_for_day(user, collection, day, clock)}
                final = {d["id"]: normal(d) for d in documents_for_day(user, collection, day, final_clock)}
                first = {d["id"] for d in documents_for_day(user, collection, day, first_clock[day])}
                figures["truth_documents"] += len(final)
                figures["late_documents"] += len(set(window) - first)
                for doc_id, doc in final.items():
                    key = (collection, patient.patient_id, doc_id)
                    expected.add(key)
                    versions = raw.get(key, [])
                    where = f"{patient.patient_id} {collection} {day} {doc_id}"
                    if len(versions) > 1:
                        note("duplicated", where)
                    if not versions:
                        note("lost" if doc_id in window else "after_last_run_missing", where)
                        lost_by_collection[collection] += doc_id in window
                        note("final_lost", where)
                        continue
                    stored = versions[0]
                    if stored == doc:
                        continue
                    note("final_stale", where)
                    later = [
                        normal(d)
                        for c in clocks
                        if c >= clock
                        for d in documents_for_day(user, collection, day, c)
                        if d["id"] == doc_id
                    ]
                    note("after_last_run_revised" if stored in later else "stale", where)
                for doc_id in set(window) - set(final):
                    note("gone_by_final_clock", f"{patient.patient_id} {collection} {day} {doc_id}")
    for key in raw.keys() - expected:
        note("unexpected", " ".join(key))
    return {
        "days_checked": len(last_clock),
        "first_day": min(last_clock).isoformat() if last_clock else None,
        "last_day": max(last_clock).isoformat() if last_clock else None,
        "final_clock": final_clock.isoformat(),
        "raw_documents": sum(len(v) for v in raw.values()),
        "raw_documents_revised": revisions_seen,
        **{
            k: figures[k]
            for k in (
                "truth_documents",
                "late_documents",
                "lost",
                "duplicated",
                "stale",
                "unexpected",
                "after_last_run_missing",
                "after_last_run_revised",
                "final_lost",
                "final_stale",
                "gone_by_final_clock",
                "not_granted",
            )
        },
        "lost_by_collection": dict(lost_by_collection),
        "collections_checked": list(domain.DOCUMENT_COLLECTIONS),
        "examples": examples,
    }


def check_tokens(warehouse: Path, faults: dict[str, int]) -> dict[str, Any]:
    statuses = dict(
        support.query(
            warehouse, "SELECT status, count(*) FROM patient_graph.wearable_connections GROUP BY status"
        )
    )
    not_active = sum(n for status, n in statuses.items() if status != domain.ACTIVE)
    return {
        "connections": statuses,
        # The simulator is never told to reject a refresh here, so every connection not active was lost.
        "tokens_lost": not_active,
        "refresh_token_offered_twice": faults["spent_refresh_reuse"],
    }


def soak(size: dict[str, int], seed: int, workdir: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    n_nights = size["nights"]
    kill_count = max(1, round(n_nights * KILL_SHARE))
    # Never the first night (it is the only run covering its earliest day) nor the last (the check reads what
    # the final run left); every other kill is followed by a night that has to recover.
    kill_nights = set(rng.sample(range(1, n_nights - 1), min(kill_count, max(0, n_nights - 2))))
    config = SimulatorConfig(
        clients={
            harness.CLIENT_ID: ClientRegistration(
                secret=harness.CLIENT_SECRET, redirect_uris=(harness.REDIRECT_URI,)
            )
        },
        # See APP_RATE_LIMIT. The per-token fault limit stays tight.
        app_rate_limit=APP_RATE_LIMIT,
        seed=seed,
    )
    server = SimulatorServer(config, host="127.0.0.1").start()
    try:
        warehouse = workdir / "warehouse.duckdb"
        env = harness.pipeline_env(server.url, warehouse)
        env["OURA_ASSETS_DATA_DIR"] = str(workdir / "data")
        env["OURA_ASSETS_LOOKBACK_DAYS"] = str(LOOKBACK_DAYS)
        first_clock = datetime.combine(FIRST_NIGHT, datetime.min.time(), UTC) + timedelta(hours=3)
        _post(server.url, "/_sim/clock", {"now": (first_clock - timedelta(hours=1)).isoformat()})
        connect_began = time.perf_counter()
        with harness.applied_env(env) as settings:
            patients = [
                support.connect_patient(settings, f"soak-p{i:03d}", f"soak-user-{seed}-{i:03d}")
                for i in range(size["patients"])
            ]
        connect_s = time.perf_counter() - connect_began
        print(f"connected {len(patients)} patients in {connect_s:.0f} s", flush=True)
        nights: list[Night] = []
        durations: list[float] = []
        for index in range(n_nights):
            tick = FIRST_NIGHT + timedelta(days=index)
            clock = datetime.combine(tick, datetime.min.time(), UTC) + timedelta(
                hours=3, minutes=rng.randint(0, 30)
            )
            end = tick - timedelta(days=1)
            night = Night(index, clock, end - timedelta(days=LOOKBACK_DAYS), end, index in kill_nights)
            _post(server.url, "/_sim/clock", {"now": clock.isoformat(), "frozen": True})
            expired = rng.sample(patients, round(len(patients) * EXPIRE_SHARE))
            _post(server.url, "/_sim/faults", FAULTS)
            server.control.set_faults(
                users={p.ring_user: {"expire_access_tokens": p in expired} for p in patients}
            )
            before = _fault_counts(server.control.stats())
            typical = statistics.median(durations) if durations else 30.0 * len(patients) / 100 + 5
            run_one_night(night, env, workdir, rng, typical)
            after = _fault_counts(server.control.stats())
            night.faults = {k: after[k] - before[k] for k in after}
            if night.completed:
                durations.append(night.run["run_s"])
                night.sync_results = _sync_results(warehouse, night.run["run_id"])
            nights.append(night)
            print(
                f"night {index + 1:2d}/{n_nights} {night.start}..{night.end} "
                + (
                    f"KILLED after {night.kill_after_s:.1f} s"
                    if night.killed
                    else f"run {night.run['run_s']:.0f} s, success={night.run['success']}, "
                    f"{night.sync_results}"
                )
                + f"; faults {night.faults}",
                flush=True,
            )
        server.control.reset()
        faults = _fault_counts(server.control.stats())
        documents = check_documents(warehouse, patients, nights)
        tokens = check_tokens(warehouse, faults)
    finally:
        server.stop()
    statuses: Counter[str] = Counter()
    for night in nights:
        statuses.update(night.sync_results)
    return {
        "nights": n_nights,
        "patients": len(patients),
        "connect_s": connect_s,
        "kills_planned": len(kill_nights),
        "kills_made": sum(n.killed for n in nights),
        "runs_completed": sum(n.completed for n in nights),
        "runs_failed": sum(n.completed and not n.run["success"] for n in nights),
        "patient_results": dict(statuses),
        "faults_seen": faults,
        "documents": documents,
        "tokens": tokens,
        "nights_detail": [
            {
                "night": n.index + 1,
                "clock": n.clock.isoformat(),
                "range": [n.start.isoformat(), n.end.isoformat()],
                "killed": n.killed,
                "kill_after_s": n.kill_after_s,
                "wall_s": n.wall_s,
                "run": n.run,
                "sync_results": n.sync_results,
                "faults": n.faults,
            }
            for n in nights
        ],
    }


GOAL_ZERO = ("lost", "duplicated", "stale", "unexpected")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 nights x 20 patients instead of 30 x 100")
    parser.add_argument("--seed", type=int, default=7, help="seeds the fault dice, kills and patient names")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/soak-…)")
    parser.add_argument("--nights", type=int, help="override the number of nights (at least 3)")
    parser.add_argument("--patients", type=int, help="override the number of patients")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (warehouse, logs)")
    parser.add_argument("--night", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.night:
        spec = json.loads(args.night)
        print(json.dumps(run_night(date.fromisoformat(spec["start"]), date.fromisoformat(spec["end"]))))
        return 0

    size_name = "quick" if args.quick else "full"
    size = dict(SIZES[size_name])
    if args.nights or args.patients:
        size_name = "custom"
        size.update({k: v for k, v in (("nights", args.nights), ("patients", args.patients)) if v})
    out = args.out or RESULTS_DIR / f"soak-{size_name}-latest.json"
    machine = harness.machine_info()
    print(f"oura_assets soak ({size_name}, seed {args.seed}): {machine['nproc']} CPUs ({machine['cpu']})")
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="oura-soak-"))
    try:
        result = soak(size, args.seed, workdir)
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
        else:
            print(f"work directory kept: {workdir}")
    docs, tokens = result["documents"], result["tokens"]
    goal = {k: docs[k] for k in GOAL_ZERO} | {"tokens_lost": tokens["tokens_lost"]}
    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bench/soak.py", *(argv if argv is not None else sys.argv[1:])]),
        "size": size_name,
        "seed": args.seed,
        "machine": machine,
        "total_s": time.perf_counter() - began,
        "faults_configured": FAULTS,
        "expire_share": EXPIRE_SHARE,
        "lookback_days": LOOKBACK_DAYS,
        "goal_zero": goal,
        "ok": not any(goal.values()),
        **result,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    f = result["faults_seen"]
    print(
        f"\n{result['nights']} nights x {result['patients']} patients in {report['total_s']:.0f} s: "
        f"kills {result['kills_made']}/{result['kills_planned']}, runs failed {result['runs_failed']}, "
        f"patient results {result['patient_results']}\n"
        f"faults seen: {f['http_5xx_injected']} 5xx, {f['dropped_connections']} dropped, {f['http_429']} 429 "
        f"of {f['data_requests']} data requests; {f['refresh_grants']} refreshes\n"
        f"documents: {docs['truth_documents']} in truth ({docs['late_documents']} late, "
        f"{docs['raw_documents_revised']} revised in raw; {docs['not_granted']} more in collections not "
        f"granted); lost {docs['lost']} {docs['lost_by_collection']}, duplicated "
        f"{docs['duplicated']}, stale {docs['stale']}, unexpected {docs['unexpected']}; after the last "
        f"covering run: {docs['after_last_run_missing']} missing, {docs['after_last_run_revised']} revised\n"
        f"tokens lost {tokens['tokens_lost']} ({tokens['connections']}), refresh token offered twice "
        f"{tokens['refresh_token_offered_twice']}\nresults: {out}"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
