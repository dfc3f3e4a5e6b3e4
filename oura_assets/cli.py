"""The `oura-assets` command: serve the API, mint a development JWT, run the simulator, demo, dev, backfill,
erase a patient, `warehouse rekey` (encrypt the warehouse, or change its key), `warehouse migrate` (copy it
into a DuckLake), and manage Oura webhook subscriptions.

Settings come from the environment (see README); start-up errors are one clear line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

from oura_assets.config import (
    ConfigError,
    Settings,
    demo_warehouse_key_path,
    load_settings,
    parse_warehouse_key,
)
from oura_assets.private_files import write_private

NEW_KEY_VARIABLE = "OURA_ASSETS_WAREHOUSE_NEW_KEY"


def _port_of(url: str) -> int:
    return urlsplit(url).port or (443 if url.startswith("https") else 80)


def _serve(args: argparse.Namespace) -> int:
    from oura_assets.api.server import serve

    serve(host=args.host, port=args.port or _port_of(load_settings().api_url))
    return 0


def _token(args: argparse.Namespace) -> int:
    from oura_assets.api.auth import mint_dev_token

    print(mint_dev_token(load_settings(), args.patient, ttl_s=args.ttl))
    return 0


def _simulator(args: argparse.Namespace) -> int:
    from oura_assets.simulator import SimulatorConfig, run

    settings = load_settings()
    port = args.port or _port_of(settings.simulator_url)
    run(host=args.host, port=port, config=SimulatorConfig.from_settings(settings))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from oura_assets.demo import DemoError, run_demo

    try:
        return run_demo(days=args.days)
    except DemoError as exc:
        print(f"oura-assets demo: {exc}", file=sys.stderr)
        return 2


def _erase_patient(args: argparse.Namespace) -> int:
    """Erase one patient everywhere (Oura grant, every table, token journal); audited as `operator`."""
    import uuid

    from oura_assets import coordination
    from oura_assets import warehouse as wh
    from oura_assets.clock import utc_now
    from oura_assets.erasure import PatientEraser
    from oura_assets.oura.oauth import OuraOAuthApp
    from oura_assets.tokens import TokenCipher

    settings = load_settings(require=("oauth", "tokens"))
    eraser = PatientEraser(
        warehouse=wh.Warehouse(settings.warehouse_path),
        oauth=OuraOAuthApp.from_settings(settings),
        cipher=TokenCipher(settings.token_keys),
        lock_dir=settings.lock_dir,
        journal_dir=settings.token_journal_dir,
        analytics_path=settings.analytics_path,
        analytics_key=settings.warehouse_key,
        coordination=coordination.from_settings(settings),
    )
    request_id = uuid.uuid4().hex
    audit = wh.AuditEntry(
        occurred_at=utc_now(),
        actor=wh.OPERATOR,
        action="erase",
        patient_id=args.patient_id,
        outcome="ok",
        request_id=request_id,
    )
    try:
        outcome = eraser.erase(args.patient_id, audit, compact=not args.no_compact)
    except wh.WarehouseBusy as exc:
        print(f"oura-assets patient erase: {exc}", file=sys.stderr)
        return 3
    revoked = {None: "no grant held", True: "yes", False: "FAILED (Oura unreachable?); erased locally anyway"}
    print(f"patient {args.patient_id} erased (audit request id {request_id})")
    print(f"  rows removed: {outcome.total_rows}")
    for table, count in sorted(outcome.rows_removed.items()):
        if count:
            print(f"    {table}: {count}")
    print(f"  revoked at Oura: {revoked[outcome.revoked]}")
    print(f"  token journal entries removed: {outcome.journal_entries_removed}")
    if outcome.compaction is not None:
        print(
            f"  file compacted: {outcome.compaction.bytes_before} -> {outcome.compaction.bytes_after} bytes"
        )
    else:
        print("  file not compacted: erased rows stay in freed blocks until the housekeeping job compacts it")
    return 0


def _dagster_env(demo: bool) -> dict[str, str] | None:
    """This environment with DAGSTER_HOME set to the instance `make dev` shows (None, said why, if not)."""
    from oura_assets.demo import DemoError, ensure_dagster_home

    env = dict(os.environ)
    if demo:
        env.setdefault("OURA_ASSETS_DEMO", "1")
    try:
        ensure_dagster_home(env, Path.cwd())
    except DemoError as exc:
        print(f"oura-assets: {exc}", file=sys.stderr)
        return None
    return env


def _shard_run_command(dagster: str, args: argparse.Namespace, shard: str) -> list[str]:
    """`dagster job execute` of the sync job over the range as one run, tagged with its shard: the range tags
    are what `asset materialize --partition-range` sets, and that command takes no other tags."""
    import json

    from oura_assets.defs.jobs import SYNC_JOB_NAME
    from oura_assets.defs.partitions import SHARD_TAG, TRIGGER_TAG, partition_range_tags

    tags = {**partition_range_tags(args.start, args.end), SHARD_TAG: shard, TRIGGER_TAG: "backfill"}
    command = [dagster, "job", "execute", "-m", "oura_assets.definitions", "-j", SYNC_JOB_NAME]
    return [*command, "--tags", json.dumps(tags)]


def _backfill(args: argparse.Namespace) -> int:
    """`dagster asset materialize` over a day range as one run, recorded in the instance `make dev` shows.

    The run executes in this very process (exec, in-process executor): killing it ends the whole run. With
    `--shard i/N` the run syncs one shard's patients (start the other shards elsewhere, e.g. on other hosts);
    with `--shards N` this command starts all N shard runs side by side as child processes, waits for them
    and fails if any failed (Ctrl-C stops them all).
    """
    from oura_assets.shards import Shard

    if args.end < args.start:
        print("oura-assets backfill: the end day is before the start day", file=sys.stderr)
        return 2
    try:
        if args.shard is not None:
            shards = [Shard.parse(args.shard)]
        else:
            shards = Shard.all(args.shards) if args.shards is not None else []
    except ValueError as exc:
        print(f"oura-assets backfill: {exc}", file=sys.stderr)
        return 2
    env = _dagster_env(demo=False)
    if env is None:
        return 2
    dagster = str(Path(sys.executable).parent / "dagster")
    if len(shards) > 1:
        # Create the instance's storage here, once: N fresh run processes creating a SQLite instance's
        # tables at the same moment fail with "table run_tags already exists".
        import dagster as dg

        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            instance.get_runs(limit=1)
        children = []
        try:
            for shard in shards:
                command = _shard_run_command(dagster, args, str(shard))
                print(f"shard {shard}: {' '.join(command[1:])}", flush=True)
                children.append(subprocess.Popen(command, env=env))
            codes = [child.wait() for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.terminate()
                    child.wait(timeout=60)
        for shard, code in zip(shards, codes, strict=True):
            print(f"shard {shard}: {'ok' if code == 0 else f'FAILED (exit {code})'}", flush=True)
        return max(codes)
    if shards:
        command = _shard_run_command(dagster, args, str(shards[0]))
    else:
        command = [dagster, "asset", "materialize", "-m", "oura_assets.definitions", "--select", "*"]
        command += ["--partition-range", f"{args.start.isoformat()}...{args.end.isoformat()}"]
    print(f"DAGSTER_HOME={env['DAGSTER_HOME']} {' '.join(command[1:])}", flush=True)
    os.execve(dagster, command, env)  # noqa: S606 (a fixed command; the run becomes this process)


def _subscribe_when_up(settings: Settings, wait_s: float = 120.0) -> None:
    """`oura-assets webhooks ensure` for `make dev`, as soon as the API and the simulator answer."""
    import httpx

    from oura_assets.oura.webhooks import WebhookApiError, ensure_from_settings
    from oura_assets.tls import tls_context

    deadline = time.monotonic() + wait_s
    last = "the API did not answer"
    while time.monotonic() < deadline:
        try:
            if httpx.get(settings.api_url + "/healthz", timeout=2, verify=tls_context()).status_code == 200:
                report = ensure_from_settings(settings)
                print(
                    f"webhook subscriptions: {len(report.created)} created, {len(report.renewed)} renewed, "
                    f"{len(report.kept)} kept",
                    flush=True,
                )
                return
        except (httpx.HTTPError, WebhookApiError, ConfigError) as exc:
            last = str(exc)
        time.sleep(1)
    print(f"webhook subscriptions not ensured ({last}); run: oura-assets webhooks ensure", flush=True)


def _dev(args: argparse.Namespace) -> int:
    """Simulator, connection API and `dagster dev` (UI + daemon) together, until Ctrl-C."""
    env = _dagster_env(demo=True)
    if env is None:
        return 2
    settings = load_settings(env)
    exe = Path(sys.executable).parent
    commands = [
        [str(exe / "oura-assets"), "serve"],
        [
            str(exe / "dagster"),
            "dev",
            "-w",
            "workspace.yaml",
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
        ],
    ]
    if settings.demo:
        commands.insert(0, [str(exe / "oura-assets"), "simulator"])

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C, and SIGTERM from a service manager, both shut the children down (a background job may start
    # with SIGINT ignored, so install the handlers explicitly).
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    children = [subprocess.Popen(command, env=env) for command in commands]
    print(f"Dagster UI http://127.0.0.1:{args.port}  connection API {settings.api_url}", flush=True)
    if settings.demo:
        # Webhooks work out of the box: once the API answers (the simulator verifies the callback), subscribe.
        threading.Thread(target=_subscribe_when_up, args=(settings,), daemon=True).start()
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
    return max((child.returncode or 0) for child in children)


def _new_warehouse_key(args: argparse.Namespace, current: str | None, encrypted: bool) -> str:
    """The key to encrypt with: from --new-key-file, else OURA_ASSETS_WAREHOUSE_NEW_KEY, else (for a plain
    file) the configured OURA_ASSETS_WAREHOUSE_KEY. Never from the command line, where `ps` would show it."""
    if args.new_key_file is not None:
        return parse_warehouse_key(Path(args.new_key_file).read_text().strip(), "--new-key-file")
    if os.environ.get(NEW_KEY_VARIABLE, "").strip():
        return parse_warehouse_key(os.environ[NEW_KEY_VARIABLE].strip(), NEW_KEY_VARIABLE)
    if current is not None and not encrypted:
        return current
    raise ConfigError(
        f"give the new key in {NEW_KEY_VARIABLE} or --new-key-file"
        + ("" if current is not None else ", or set OURA_ASSETS_WAREHOUSE_KEY to encrypt a plain warehouse")
    )


def _warehouse_rekey(args: argparse.Namespace) -> int:
    """Encrypt the warehouse with a new key (or encrypt a plain one), under the writer lock."""
    from oura_assets import warehouse as wh

    settings = load_settings()
    path = settings.warehouse_path
    if not isinstance(path, Path):
        raise ConfigError("rekey encrypts a DuckDB file; OURA_ASSETS_WAREHOUSE is a DuckLake")
    if not path.exists():
        raise ConfigError(f"no warehouse at {path} (OURA_ASSETS_WAREHOUSE)")
    encrypted = wh.is_encrypted(path)
    new_key = _new_warehouse_key(args, settings.warehouse_key, encrypted)
    demo_key = demo_warehouse_key_path(settings.data_dir)
    keep_demo_key = settings.demo and not os.environ.get("OURA_ASSETS_WAREHOUSE_KEY", "").strip()
    pending = demo_key.with_name(demo_key.name + ".new")
    if keep_demo_key:
        # Written before the swap, so a crash right after it still leaves the new key on disk.
        write_private(pending, new_key)
    try:
        result = wh.rekey(wh.Warehouse(path), settings.warehouse_key, new_key, timeout_s=args.wait)
    except wh.WarehouseBusy as exc:
        pending.unlink(missing_ok=True)
        print(f"oura-assets warehouse rekey: {exc}", file=sys.stderr)
        return 3
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    if keep_demo_key:
        os.replace(pending, demo_key)
        where = f"the demo key in {demo_key} is updated"
    else:
        where = "give every process the new key in OURA_ASSETS_WAREHOUSE_KEY"
    print(
        f"warehouse {path}: {'re-encrypted' if result.was_encrypted else 'encrypted'} with the new key "
        f"({result.tables} tables, {result.rows} rows, {result.seconds:.1f} s); {where}; the next analytics "
        "snapshot is written with it"
    )
    return 0


def _warehouse_migrate(args: argparse.Namespace) -> int:
    """Copy the DuckDB warehouse (OURA_ASSETS_WAREHOUSE, with its key) into a DuckLake, checked per table."""
    from oura_assets import warehouse as wh

    settings = load_settings()
    source = settings.warehouse_path
    if not isinstance(source, Path):
        raise ConfigError(
            "OURA_ASSETS_WAREHOUSE is already a DuckLake: point it at the DuckDB file to migrate"
        )
    if not source.exists():
        raise ConfigError(f"no warehouse at {source} (OURA_ASSETS_WAREHOUSE)")
    target = wh.lake_location(args.to, args.data_path or os.environ.get(wh.DATA_PATH_VARIABLE))
    try:
        done = wh.migrate_to_lake(
            wh.Warehouse.from_settings(settings), target, replace=args.replace, timeout_s=args.wait
        )
    except (wh.WarehouseBusy, wh.MigrationRefused) as exc:
        print(f"oura-assets warehouse migrate: {exc}", file=sys.stderr)
        return 3
    verb = "copied into" if done.copied else "already in"
    print(
        f"warehouse {source}: {done.rows} rows of {len(done.tables)} tables {verb} {target} (data path "
        f"{target.data_path}), row counts and checksums equal per table ({done.seconds:.1f} s). Point every "
        f"process at it: OURA_ASSETS_WAREHOUSE='{target}' {wh.DATA_PATH_VARIABLE}='{target.data_path}'"
    )
    return 0


def _webhooks(args: argparse.Namespace) -> int:
    """The application's Oura webhook subscriptions: ensure (create missing, renew expiring), list, delete."""
    import json
    from datetime import timedelta

    from oura_assets.oura.webhooks import WebhookApiError, client_from_settings, ensure_from_settings

    settings = load_settings(require=("oauth",))
    try:
        if args.action == "ensure":
            report = ensure_from_settings(settings, renew_within=timedelta(days=args.renew_within_days))
            print(json.dumps(report.as_dict(), indent=2))
            return 0
        with client_from_settings(settings) as client:
            subscriptions = client.list()
            if args.action == "list":
                print(json.dumps([s.as_dict() for s in subscriptions], indent=2))
                return 0
            ids = [s.id for s in subscriptions] if args.all else args.ids
            if not ids:
                print("oura-assets webhooks delete: name subscription ids, or --all", file=sys.stderr)
                return 2
            for subscription_id in ids:
                client.delete(subscription_id)
            print(json.dumps({"deleted": ids}, indent=2))
            return 0
    except WebhookApiError as exc:
        print(f"oura-assets webhooks: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oura-assets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the connection API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, help="default: the port of OURA_ASSETS_API_URL (8000)")
    serve.set_defaults(func=_serve)

    token = sub.add_parser("token", help="print a development JWT for a patient (demo mode only)")
    token.add_argument("--patient", required=True, help="the patient id (the JWT's sub)")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(func=_token)

    sim = sub.add_parser("simulator", help="run the bundled Oura simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, help="default: the port of OURA_ASSETS_SIMULATOR_URL (8787)")
    sim.set_defaults(func=_simulator)

    demo = sub.add_parser("demo", help="connect demo patients and materialize the last 30 days")
    demo.add_argument("--days", type=int, default=30)
    demo.set_defaults(func=_demo)

    backfill = sub.add_parser(
        "backfill", help="materialize a day range as one run, in the Dagster instance `make dev` shows"
    )
    backfill.add_argument("start", type=date.fromisoformat, help="first day, YYYY-MM-DD")
    backfill.add_argument("end", type=date.fromisoformat, help="last day, YYYY-MM-DD (inclusive)")
    sharding = backfill.add_mutually_exclusive_group()
    sharding.add_argument(
        "--shards", type=int, metavar="N", help="split the patients into N shard runs, run side by side"
    )
    sharding.add_argument("--shard", metavar="I/N", help="run only shard I of N (e.g. 2/3)")
    backfill.set_defaults(func=_backfill)

    patient = sub.add_parser("patient", help="operator actions on one patient's data")
    patient_sub = patient.add_subparsers(dest="patient_command", required=True)
    erase = patient_sub.add_parser(
        "erase",
        help="revoke at Oura and remove every row of the patient from the warehouse (audited); idempotent",
    )
    erase.add_argument("patient_id", help="the patient id (the JWT's sub)")
    erase.add_argument(
        "--no-compact",
        action="store_true",
        help="skip rewriting the file now (erased rows then linger in freed blocks until the daily "
        "housekeeping job compacts it)",
    )
    erase.set_defaults(func=_erase_patient)

    webhooks = sub.add_parser("webhooks", help="Oura webhook subscriptions: ensure | list | delete")
    actions = webhooks.add_subparsers(dest="action", required=True)
    ensure = actions.add_parser("ensure", help="create missing subscriptions, renew those close to expiry")
    ensure.add_argument("--renew-within-days", type=int, default=7, help="renew what expires within N days")
    actions.add_parser("list", help="this application's subscriptions, as JSON")
    delete = actions.add_parser("delete", help="delete subscriptions by id (or all of them)")
    delete.add_argument("ids", nargs="*", help="subscription ids")
    delete.add_argument("--all", action="store_true", help="delete every subscription of this application")
    webhooks.set_defaults(func=_webhooks)

    dev = sub.add_parser("dev", help="simulator (demo mode) + connection API + Dagster UI and daemon")
    dev.add_argument("--port", type=int, default=3000, help="Dagster UI port")
    dev.set_defaults(func=_dev)

    warehouse = sub.add_parser(
        "warehouse", help="operate on the warehouse: rekey the file, migrate to DuckLake"
    )
    warehouse_sub = warehouse.add_subparsers(dest="warehouse_command", required=True)
    rekey = warehouse_sub.add_parser(
        "rekey",
        help="copy the warehouse into a new file encrypted with a new key and swap it in atomically; "
        "with a plain warehouse and OURA_ASSETS_WAREHOUSE_KEY set, encrypt it with that key",
    )
    rekey.add_argument(
        "--new-key-file", help=f"file holding the new key (default: the {NEW_KEY_VARIABLE} variable)"
    )
    rekey.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the writer lock")
    rekey.set_defaults(func=_warehouse_rekey)
    migrate = warehouse_sub.add_parser(
        "migrate",
        help="copy the DuckDB warehouse (plain or encrypted) into a DuckLake, checked per table; refuses a "
        "target holding other rows unless --replace",
    )
    migrate.add_argument("--to", required=True, help="the lake's catalog: ducklake:postgres:<libpq DSN>")
    migrate.add_argument("--data-path", help="the lake's data path (default: OURA_ASSETS_LAKE_DATA_PATH)")
    migrate.add_argument("--replace", action="store_true", help="overwrite the rows a non-empty lake holds")
    migrate.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the writer lock")
    migrate.set_defaults(func=_warehouse_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"oura-assets: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
