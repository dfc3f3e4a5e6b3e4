"""One soak night, timed: where a nightly ranged run of `oura_sync` over 100 patients spends its wall time.

    nice -n 19 .venv/bin/python bench/bench_night.py --patients 100 --nights 5 \
        --variant base=/path/to/other/worktree --variant new=.

The world is the soak's (bench/soak.py): one simulator with the soak's faults (5xx, dropped connections, a
per-token limit of 8 requests / 2 s, a quarter of the access tokens expired each night), patients connected
through OAuth, each night a ranged run over yesterday plus the 3-day lookback in a child process, no kills.
After a first night that lands the whole history (a warm-up, not compared), the nights alternate between the
variants: each variant's code is put first on the child's PYTHONPATH, so two trees (say main and a branch)
are compared on one warehouse, one simulator and the same machine load, night after night. Per night: wall
time of the run, the child's CPU time, and with `--profile` a py-spy wall-clock profile (idle included) whose
samples are sorted into fetch, budget wait, writer-lock wait, inside transactions, and the rest.
Writes bench/results/night-latest.json (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import harness
import soak

from oura_assets.simulator import ClientRegistration, SimulatorConfig, SimulatorServer
from oura_assets_tests import support

BENCH_DIR = Path(__file__).resolve().parent

# Where a sampled stack is, by the first of these found walking from the innermost frame out (file or
# function substrings of py-spy's collapsed frames). Order matters: a lock wait inside a transaction helper
# is a lock wait.
CATEGORIES = (
    ("budget wait", ("rate_budget.py",)),
    ("retry/backoff sleep", ("client.py:_sleep", "sleep (oura_assets/sync.py", "RefetchPolicy")),
    ("writer lock wait", ("lock.py",)),
    ("db open/close", ("connections.py", "database.py:_open", "database.py:open", "close (")),
    ("token refresh", ("tokens.py", "token_journal.py", "oauth.py")),
    ("http fetch", ("httpx", "httpcore", "heartrate_pages.py", "client.py")),
    ("inside write transaction", ("warehouse/", "ledger.py", "day_status_writer.py", "duckdb")),
    ("normalize", ("normalize/", "day_status.py")),
)


def categorize(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "other"


def phase(stack: str) -> str:
    """The asset or check a main-thread sample belongs to (by the outermost frame of ours)."""
    for needle, name in (
        ("oura_raw (", "oura_raw"),
        ("rebuild_per_patient", "rebuild"),
        ("publish_snapshot", "analytics snapshot"),
        ("checks.py", "asset checks"),
        ("check_steps.py", "asset checks"),  # the step running an asset's checks, webhooks' one included
        ("defs/assets.py", "assets (other)"),
    ):
        if needle in stack:
            return name
    return "dagster/other"


def read_profile(path: Path, rate: int) -> dict[str, Any]:
    """Seconds of samples per thread kind and category, from py-spy's raw (collapsed) output."""
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    main_phases: Counter[str] = Counter()
    threads: dict[str, set[str]] = defaultdict(set)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        head, _, rest = stack.partition(";")
        if "sync_one (" in rest or "fetch_one (" in rest:
            kind = "patient threads"
        elif "GroupWriter._run (" in rest:
            kind = "writer thread"
        elif rest.startswith("<module> (") and "soak.py" in rest.split(";")[0]:
            kind = "main thread"
        elif "_worker (" in rest:
            kind = "idle pool threads"
        else:
            kind = "other threads"
        seconds = int(count) / rate
        by_kind[kind][categorize(stack)] += seconds
        threads[kind].add(head)
        if kind == "main thread":
            main_phases[phase(stack)] += seconds
    return {
        "seconds": {k: {c: round(s, 1) for c, s in v.most_common()} for k, v in by_kind.items()},
        "main_thread_phases": {k: round(s, 1) for k, s in main_phases.most_common()},
        "threads": {k: len(v) for k, v in threads.items()},
    }


def run_night(
    night: soak.Night, env: dict[str, str], tree: Path, workdir: Path, profile_rate: int | None
) -> dict[str, Any]:
    spec = json.dumps({"start": night.start.isoformat(), "end": night.end.isoformat()})
    child_env = harness.child_environ(env)
    child_env["PYTHONPATH"] = f"{tree.resolve()}:{BENCH_DIR}"
    command = [sys.executable, str(BENCH_DIR / "soak.py"), "--night", spec]
    raw = workdir / f"night-{night.index:02d}.spy"
    if profile_rate:
        spy = Path(sys.executable).with_name("py-spy")
        command = [str(spy), "record", "--idle", "--threads", "--nonblocking", "--format", "raw"]
        command += ["-r", str(profile_rate), "-o", str(raw), "--", sys.executable]
        command += [str(BENCH_DIR / "soak.py"), "--night", spec]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    with (workdir / f"night-{night.index:02d}.log").open("w") as log:
        done = subprocess.run(
            command, env=child_env, cwd=workdir, stdout=subprocess.PIPE, stderr=log, text=True, check=False
        )
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (workdir / f"night-{night.index:02d}.log").read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError(f"night {night.index} exited {done.returncode}:\n" + "\n".join(tail))
    run = json.loads(lines[-1])
    out = {
        "wall_s": round(wall, 1),
        "run_s": round(run["run_s"], 1),
        "cpu_s": round(
            after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1
        ),  # includes py-spy's own when profiling
        "run_id": run["run_id"],
        "success": run["success"],
        "tags": run["tags"],
        "failures": run["failures"],
    }
    if profile_rate and raw.exists():
        out["profile"] = read_profile(raw, profile_rate)
    return out


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    variants = [(name, Path(tree)) for name, _, tree in (v.partition("=") for v in args.variant)]
    rng = random.Random(args.seed)
    config = SimulatorConfig(
        clients={
            harness.CLIENT_ID: ClientRegistration(
                secret=harness.CLIENT_SECRET, redirect_uris=(harness.REDIRECT_URI,)
            )
        },
        app_rate_limit=soak.APP_RATE_LIMIT,
        seed=args.seed,
    )
    server = SimulatorServer(config, host="127.0.0.1").start()
    results: list[dict[str, Any]] = []
    try:
        warehouse = workdir / "warehouse.duckdb"
        env = harness.pipeline_env(server.url, warehouse)
        env["OURA_ASSETS_DATA_DIR"] = str(workdir / "data")
        env["OURA_ASSETS_LOOKBACK_DAYS"] = str(soak.LOOKBACK_DAYS)
        first = datetime.combine(soak.FIRST_NIGHT, datetime.min.time(), UTC) + timedelta(hours=3)
        soak._post(server.url, "/_sim/clock", {"now": (first - timedelta(hours=1)).isoformat()})
        with harness.applied_env(env) as settings:
            patients = [
                support.connect_patient(settings, f"soak-p{i:03d}", f"soak-user-{args.seed}-{i:03d}")
                for i in range(args.patients)
            ]
        for index in range(args.nights):
            tick = soak.FIRST_NIGHT + timedelta(days=index)
            clock = datetime.combine(tick, datetime.min.time(), UTC) + timedelta(
                hours=3, minutes=rng.randint(0, 30)
            )
            end: date = tick - timedelta(days=1)
            night = soak.Night(index, clock, end - timedelta(days=soak.LOOKBACK_DAYS), end, False)
            soak._post(server.url, "/_sim/clock", {"now": clock.isoformat(), "frozen": True})
            expired = rng.sample(patients, round(len(patients) * soak.EXPIRE_SHARE))
            soak._post(server.url, "/_sim/faults", soak.FAULTS)
            server.control.set_faults(
                users={p.ring_user: {"expire_access_tokens": p in expired} for p in patients}
            )
            before = soak._fault_counts(server.control.stats())
            name, tree = variants[0] if index == 0 else variants[(index - 1) % len(variants)]
            result = run_night(night, env, tree, workdir, args.profile)
            after = soak._fault_counts(server.control.stats())
            result.update(
                night=index + 1,
                variant=name,
                warm_up=index == 0,
                faults={k: after[k] - before[k] for k in after},
                sync_results=soak._sync_results(warehouse, result["run_id"]),
            )
            results.append(result)
            print(
                f"night {index + 1} [{name}{' warm-up' if index == 0 else ''}] run {result['run_s']} s, "
                f"wall {result['wall_s']} s, cpu {result['cpu_s']} s, success={result['success']}, "
                f"requests {result['faults']['data_requests']}, 429s {result['faults']['http_429']}",
                flush=True,
            )
    finally:
        server.stop()
    summary = {}
    for name, _ in variants:
        runs = [r["run_s"] for r in results if r["variant"] == name and not r["warm_up"]]
        if runs:
            summary[name] = {"nights": len(runs), "median_run_s": statistics.median(runs), "runs": runs}
    return {"patients": args.patients, "summary": summary, "nights": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--nights", type=int, default=3, help="including the first (warm-up) night")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=TREE: a source tree whose oura_assets the child imports (repeat to alternate)",
    )
    parser.add_argument("--profile", type=int, default=0, help="py-spy samples per second (0: off)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "night-latest.json")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if not args.variant:
        args.variant = [f"this={BENCH_DIR.parent}"]
    workdir = Path(tempfile.mkdtemp(prefix="bench-night-"))
    try:
        report = bench(args, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
