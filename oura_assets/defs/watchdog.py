"""The run-worker watchdog: a run whose worker process is gone is marked failed, not left `STARTED`.

Dagster's run monitoring (enabled in the repository's `dagster.yaml`) fails runs stuck starting or canceling,
but with the default run launcher it cannot ask whether a `STARTED` run's worker still lives
(`DefaultRunLauncher.supports_check_run_worker_health` is false). So a run whose process was killed
(`kill -9`, the OOM killer, `dagster asset materialize` killed hard, `dagster dev` killed with its code
server) stayed `STARTED` forever. Every Dagster event records the pid of the process that wrote it, and the
run worker writes `RUN_START` itself, so that event names the worker; this sensor, evaluated by the daemon,
fails every `STARTED` run whose worker is no longer alive. It assumes runs execute on the daemon's host, as
`make dev` and deploy/docker-compose.yaml do; under a launcher that reports on its workers itself (the
K8sRunLauncher) it stands aside for Dagster's run monitoring.
"""

import os
from pathlib import Path

import dagster as dg

WATCHDOG_INTERVAL_S = 30
# A pid whose process began after the run started belongs to a newer process: the worker is gone.
_CLOCK_SLACK_S = 1.0


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def process_alive(pid: int, started_by: float) -> bool:
    """Whether `pid` is a live process (not a zombie) that began no later than `started_by` (epoch s)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no procfs (macOS): existence is all we can tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # Fields after the command name (which may contain spaces and parentheses): state is 3rd, starttime 22nd.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    began = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return began <= started_by + _CLOCK_SLACK_S


def run_worker(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, when) of the process that started the run, from its `RUN_START` event; None before it starts."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START):
        if entry.dagster_event is not None and entry.dagster_event.pid is not None:
            return entry.dagster_event.pid, entry.timestamp
    return None


def fail_runs_without_worker(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed every `STARTED` run whose worker process is gone; returns their run ids.

    Only with a launcher that starts runs on this host and cannot report on them (the default launcher):
    one that can (the K8sRunLauncher of deploy/helm/values.yaml asks Kubernetes about the run's Job) leaves
    it to Dagster's run monitoring, and there a worker's pid belongs to another pod, so this check would
    take every live run for dead.
    """
    if instance.run_launcher.supports_check_run_worker_health:
        return []
    failed = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        run = record.dagster_run
        worker = run_worker(instance, run.run_id)
        if worker is None or process_alive(*worker):
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status != dg.DagsterRunStatus.STARTED:
            continue  # finished between the two reads
        instance.report_run_failed(
            current,
            f"The run worker (pid {worker[0]}) is gone: the process was killed or crashed. "
            "Nothing of the run is still running; materialize its range again.",
        )
        failed.append(run.run_id)
    return failed


def build_run_worker_watchdog() -> dg.SensorDefinition:
    @dg.sensor(
        name="run_worker_watchdog",
        minimum_interval_seconds=WATCHDOG_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Marks a run failed when its worker process is gone (killed or crashed), so no run stays "
            "STARTED forever."
        ),
    )
    def run_worker_watchdog(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        failed = fail_runs_without_worker(context.instance)
        if failed:
            context.log.warning(f"marked {len(failed)} run(s) failed, their worker gone: {', '.join(failed)}")
            return dg.SkipReason(f"marked failed: {', '.join(failed)}")
        return dg.SkipReason("every started run has a live worker")

    return run_worker_watchdog
