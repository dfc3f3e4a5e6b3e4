"""Shards: one sync process for every patient vs three shard processes at once, against one Oura limit.

What a shard run spends its time on is its sync step (`sync_patients` through the shared `RateBudget`), so
each arm runs exactly that, in separate OS processes as shard runs are, through the tests' own worker
(`oura_assets_tests.rate_budget_worker`, which is `support.budgeted_sync`); Dagster's per-step overhead is
the same per run and not what sharding changes. The simulator allows `LIMIT` requests per second per
application and answers each in `LATENCY` ms. The budget has learned that limit already (as it has on any
night after the first: a learned limit is kept for a day), so the figures are about pacing, not learning.
The three shards share the budget through PostgreSQL when the server binaries are installed (the multi-host
setting), else through the host's SQLite file; the JSON says which.

Measured from the simulator's own log of answered requests (`SimulatorControl.answered`): requests per
second while the arm was sending, as a fraction of the limit; 429s; the most requests in any 1 s window; and
each shard's share of the requests sent while all three were sending (1/3 each is fair). Checked: every
patient synced in each arm (by exactly one shard in the sharded one) and the raw tables identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import harness

from oura_assets.oura.rate_budget import RateBudget
from oura_assets.shards import Shard
from oura_assets_tests import support

ROOT = Path(__file__).resolve().parent.parent
LIMIT = {"limit": 30, "window_s": 1}
LATENCY = {"latency_ms": 100}
START, END = date(2024, 6, 1), date(2024, 6, 7)
SHARDS = 3
PATIENTS = {"full": 24, "quick": 9}
RAW_TABLES = ("daily_readiness", "daily_sleep", "sleep", "daily_activity", "heartrate")
# Compared without when a row was fetched or first seen: the two arms fetch the same documents at different
# moments.
WHEN = support.VOLATILE | {"first_seen_at", "last_changed_at"}


@contextmanager
def _budget_database() -> Iterator[str | None]:
    """`postgres:<dsn>` of a throwaway PostgreSQL database when the server binaries are installed, else None
    (the host's SQLite budget)."""
    from oura_assets_tests import postgres_server

    try:
        postgres_server.find_bin_dir()
    except RuntimeError:
        yield None
        return
    with postgres_server.running_postgres() as server:
        yield f"postgres:{server.create_database('bench_budget')}"


def _arm(name: str, parts: list[list[str]], budget: str | None) -> dict[str, Any]:
    """A fresh simulator and warehouse, every patient connected, then one sync process per part at once."""
    patients = [p for part in parts for p in part]
    with tempfile.TemporaryDirectory(prefix="oura-bench-shards-") as tmp:
        workdir = Path(tmp)
        server = harness.start_simulator()
        try:
            env = harness.pipeline_env(server.url, workdir / "warehouse.duckdb")
            if budget is not None:
                env["OURA_ASSETS_RATE_BUDGET"] = budget
            with harness.applied_env(env) as settings:
                for patient in patients:
                    support.connect_patient(settings, patient)
                with RateBudget.from_settings(settings) as shared:
                    # What every later night starts from: the limit Oura's headers taught the first one.
                    shared.observe(
                        200,
                        {
                            "X-RateLimit-Limit": str(LIMIT["limit"]),
                            "X-RateLimit-Window": str(LIMIT["window_s"]),
                        },
                        0.1,
                    )
            server.control.set_faults(rate_limit=LIMIT, **LATENCY)
            server.control.reset_stats()
            child_env = {**harness.child_environ(env), "PYTHONPATH": str(ROOT)}
            outs = [workdir / f"{name}-{n}.json" for n in range(len(parts))]
            began = time.monotonic()
            worker = [sys.executable, "-m", "oura_assets_tests.rate_budget_worker"]
            days = [START.isoformat(), END.isoformat()]
            workers = [
                subprocess.Popen(
                    [*worker, str(out), f"{name}-{n}", *days, *part],
                    env=child_env,
                    cwd=workdir,
                    stdout=subprocess.DEVNULL,
                    stderr=(workdir / f"{name}-{n}.log").open("w"),
                )
                for n, (out, part) in enumerate(zip(outs, parts, strict=True))
            ]
            codes = [w.wait(timeout=600) for w in workers]
            wall_s = time.monotonic() - began
            if any(codes):
                log = (workdir / f"{name}-{codes.index(next(c for c in codes if c))}.log").read_text()
                raise RuntimeError(f"shard worker failed: {codes}\n{log[-3000:]}")
            reports = [json.loads(out.read_text()) for out in outs]
            answered = server.control.answered()
        finally:
            server.stop()
        snapshot = support.snapshot(
            workdir / "warehouse.duckdb", [f"oura_raw.{t}" for t in RAW_TABLES], drop=WHEN
        )
    ok = [at for at, status in answered if status == "200"]
    span = max(ok) - min(ok) if len(ok) > 1 else 0.0
    per_s = (len(ok) - 1) / span if span else 0.0
    statuses = [r["statuses"] for r in reports]
    return {
        "processes": len(parts),
        "patients_per_process": [len(p) for p in parts],
        "wall_s": wall_s,
        "requests": len(ok),
        "rate_limited": sum(status == "429" for _, status in answered),
        "requests_per_s": per_s,
        "sending_s": span,
        "fraction_of_limit": per_s / (LIMIT["limit"] / LIMIT["window_s"]),
        # Every request that reached the simulator, refused or not: it lets no more than the limit through,
        # so the 200s alone would always be within it.
        "peak_in_any_window": support.peak_in_window([at for at, _ in answered], LIMIT["window_s"]),
        "shares_while_all_active": support.shares_while_all_active([r["sent_at"] for r in reports])
        if len(reports) > 1
        else [1.0],
        "synced": sorted(p for s in statuses for p, status in s.items() if status == "success"),
        "synced_by": [sorted(s) for s in statuses],
        "snapshot": snapshot,
    }


def _s(seconds: float) -> str:
    return f"{seconds:.1f} s"


def _balanced_patients(count: int) -> list[str]:
    """`count` patient ids, as many in each shard: fairness is judged between shards that want as much (a
    shard of one patient, whose requests go one after another, cannot use a third of the limit)."""
    per_shard, chosen = count // SHARDS, []
    taken = dict.fromkeys(range(1, SHARDS + 1), 0)
    n = 0
    while len(chosen) < per_shard * SHARDS:
        patient = f"bench-patient-{n}"
        shard = next(s for s in Shard.all(SHARDS) if s.holds(patient))
        if taken[shard.number] < per_shard:
            taken[shard.number] += 1
            chosen.append(patient)
        n += 1
    return chosen


def bench_shards(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    """1 vs 3 shard processes against one application limit: combined throughput and fairness."""
    quick = size.get("patients", 5) < 5  # run.py's quick size has 2 patients, the full one 5
    patients = _balanced_patients(PATIENTS["quick" if quick else "full"])
    shards = [Shard(n, SHARDS).select(patients) for n in range(1, SHARDS + 1)]
    with _budget_database() as budget:
        single = _arm("single", [patients], budget)
        sharded = _arm("sharded", shards, budget)
    identical = single.pop("snapshot") == sharded.pop("snapshot")
    each_once = single["synced"] == sharded["synced"] == sorted(patients) and all(
        set(part) == set(synced) for part, synced in zip(shards, sharded["synced_by"], strict=True)
    )
    within = all(arm["peak_in_any_window"] <= LIMIT["limit"] for arm in (single, sharded))
    shares = sharded["shares_while_all_active"]
    label = f"shards: {len(patients)} patients x {(END - START).days + 1} d, {LIMIT['limit']}/s limit"
    rows += [
        [label, "throughput, fraction of the limit", f"{single['fraction_of_limit']:.2f}",
         f"{sharded['fraction_of_limit']:.2f}", "1 process vs 3 shards"],
        [label, "time sending to Oura (first to last answer)", _s(single["sending_s"]),
         _s(sharded["sending_s"]), ""],
        [label, "wall time (processes started to all exited)", _s(single["wall_s"]), _s(sharded["wall_s"]),
         "includes start-up and warehouse writes"],
        [label, "429s", str(single["rate_limited"]), str(sharded["rate_limited"]), ""],
        [label, "most requests in any 1 s", str(single["peak_in_any_window"]),
         str(sharded["peak_in_any_window"]), f"limit {LIMIT['limit']}"],
        [label, "shard shares while all sent", "", " / ".join(f"{s:.2f}" for s in shares),
         "1/3 each is fair"],
        [label, "every patient once, raw tables identical?", "", "",
         "yes" if each_once and identical else "NO"],
    ]  # fmt: skip
    return {
        "what": "sync step of 1 process for all patients vs 3 shard processes at once, one Oura app limit",
        "params": {
            "patients": len(patients),
            "days": (END - START).days + 1,
            "limit": LIMIT,
            "faults": LATENCY,
            "budget": "postgresql" if budget else "sqlite (host)",
            "cpus": os.cpu_count(),
        },
        "baseline": {"name": "1 process (no shards)", **single},
        "candidate": {"name": f"{SHARDS} shard processes", **sharded},
        "results": {
            "shards_fraction_of_limit": sharded["fraction_of_limit"],
            "single_fraction_of_limit": single["fraction_of_limit"],
            "shards_rate_limited": sharded["rate_limited"],
            "single_rate_limited": single["rate_limited"],
            "shards_peak_in_any_window": sharded["peak_in_any_window"],
            "shard_shares_while_all_active": shares,
            "shards_wall_s": sharded["wall_s"],
            "shards_sending_s": sharded["sending_s"],
            "single_sending_s": single["sending_s"],
            "single_wall_s": single["wall_s"],
        },
        "ok": identical and each_once and within,
        "check": "every patient synced (once, by its shard), raw tables identical, no 1 s window over the "
        "limit",
    }
