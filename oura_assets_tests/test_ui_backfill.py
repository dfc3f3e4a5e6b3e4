"""A range backfill launched the way the Dagster UI launches it: `dagster dev` (webserver + daemon, as `make
dev` runs it) over the repository's `workspace.yaml` and `dagster.yaml`, the `launchPartitionBackfill`
mutation the UI's *Launch backfill* button sends, and the daemon turning it into ONE run over the whole range
(`BackfillPolicy.single_run()`) whose `wearable_sync` events its `wearable_sync_events` sensor records.

With `OURA_ASSETS_SCREENSHOT=<file.png>` set (see `docs/screenshot.sh`) the test also photographs the
backfill's page with headless Chromium once everything is asserted; without it no browser is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from oura_assets.demo import ensure_dagster_home
from oura_assets_tests.support import query
from oura_assets_tests.test_run_kill import process, wait_for

REPO = Path(__file__).resolve().parents[1]
START, END = date(2024, 6, 10), date(2024, 6, 16)
PATIENTS = ("ui-patient-0", "ui-patient-1")

# The query and mutation as the UI sends them (dagster-ui `BackfillUtils.tsx` and
# `LaunchAssetChoosePartitionsDialog.tsx`, dagster 1.13): *Materialize* on selected assets, a date range
# picked, *Launch backfill* -> `{tags, assetSelection, partitionNames, fromFailure}`.
LAUNCH_PARTITION_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on UnauthorizedError { message }
    ... on PartitionKeysNotFoundError { message }
  }
}
"""
LOCATIONS = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { name repositories { name } }
          ... on PythonError { message }
        }
      }
    }
  }
}
"""
JOB_ASSETS = """
query JobAssets($pipeline: PipelineSelector!) {
  assetNodes(pipeline: $pipeline) { assetKey { path } isPartitioned }
}
"""
BACKFILL = """
query Backfill($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill {
      id
      status
      assetBackfillData {
        assetBackfillStatuses {
          ... on AssetPartitionsStatusCounts {
            assetKey { path }
            numPartitionsTargeted
            numPartitionsInProgress
            numPartitionsMaterialized
            numPartitionsFailed
          }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""
BACKFILL_RUNS = """
query BackfillRuns($backfillId: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $backfillId}]}) {
    __typename
    ... on Runs { results { runId status tags { key value } assetSelection { path } } }
  }
}
"""
FINISHED_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
FINISHED_RUN = {"SUCCESS", "FAILURE", "CANCELED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DagsterUI:
    """The webserver's GraphQL endpoint, spoken to over HTTP as the browser speaks to it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def graphql(self, document: str, **variables: Any) -> dict[str, Any]:
        answer = self.http.post("/graphql", json={"query": document, "variables": variables})
        answer.raise_for_status()
        body = answer.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def answers(self) -> bool:
        try:
            return self.http.get("/server_info").status_code == 200
        except httpx.TransportError:
            return False

    def repository(self) -> dict[str, str] | None:
        """The loaded code location's repository selector, or None while it loads."""
        workspace = self.graphql(LOCATIONS)["workspaceOrError"]
        for entry in workspace.get("locationEntries", []):
            location = entry["locationOrLoadError"] or {}
            if location.get("__typename") == "PythonError":
                raise AssertionError(f"the code location failed to load: {location['message']}")
            if location.get("__typename") == "RepositoryLocation":
                return {
                    "repositoryLocationName": location["name"],
                    "repositoryName": location["repositories"][0]["name"],
                }
        return None


def days(start: date, end: date) -> list[str]:
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def screenshot(url: str, target: Path) -> None:
    """Headless Chromium's picture of `url`, taken only when asked for: the test needs no browser."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "OURA_ASSETS_SCREENSHOT needs Chromium (Debian: apt-get install chromium)"
    with tempfile.TemporaryDirectory() as profile:
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            # The UI is a single-page app that fetches after load: let it settle before the picture.
            "--virtual-time-budget=15000",
            f"--screenshot={target}",
            "--window-size=1400,900",
        ]
        subprocess.run([browser, *flags, url], check=True, capture_output=True, timeout=120)
    assert target.stat().st_size > 10_000, "the screenshot is (nearly) empty"


def backfill_state(ui: DagsterUI, backfill_id: str) -> dict[str, Any]:
    backfill = ui.graphql(BACKFILL, backfillId=backfill_id)["partitionBackfillOrError"]
    assert backfill["__typename"] == "PartitionBackfill", backfill
    runs = ui.graphql(BACKFILL_RUNS, backfillId=backfill_id)["runsOrError"]["results"]
    return {"backfill": backfill, "runs": runs}


@pytest.mark.slow
def test_range_backfill_launched_from_the_ui_runs_once_and_records_sync_events(
    tmp_path, pipeline_env, connect_patient
):
    # The event sensor looks at every daemon sensor loop (~5 s) rather than every 15 s: its first look comes
    # as the daemon starts, before the run, so the default left the test waiting up to 15 s after the run.
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster"), "OURA_ASSETS_SYNC_EVENTS_INTERVAL_S": "1"}
    ensure_dagster_home(env, REPO)  # the repository's dagster.yaml, as `make dev` installs it
    port = free_port()
    bin_dir = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin").is_dir() else Path(os.sys.executable).parent
    workspace = str(REPO / "workspace.yaml")
    # What `dagster dev -w workspace.yaml` (`make dev`) runs, as two processes: the daemon starts once the
    # backfill is launched, so its first backfill iteration (every 30 s, fixed in Dagster) picks it up.
    webserver = [str(bin_dir / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(port)]
    daemon = [str(bin_dir / "dagster-daemon"), "run", "-w", workspace]
    logs = {"webserver": tmp_path / "webserver.log", "daemon": tmp_path / "daemon.log"}

    def with_logs(exc: AssertionError) -> AssertionError:
        tails = [
            f"--- {name} log ---\n{path.read_text()[-3000:]}" for name, path in logs.items() if path.exists()
        ]
        return AssertionError("\n".join([str(exc), *tails]))

    with contextlib.ExitStack() as running:
        running.enter_context(process(webserver, env, tmp_path, logs["webserver"]))
        for patient_id in PATIENTS:
            connect_patient(patient_id)
        ui = DagsterUI(f"http://127.0.0.1:{port}")
        running.callback(ui.http.close)
        try:
            # Generous waits: a busy 2-core machine makes each Dagster process take several times its usual.
            wait_for("the webserver to answer", ui.answers, timeout_s=120, every_s=0.5)
            repository = wait_for("the code location to load", ui.repository, timeout_s=120, every_s=0.5)
            # Jobs -> oura_sync (or Assets, every asset selected) -> Materialize: the job's assets.
            nodes = ui.graphql(JOB_ASSETS, pipeline={**repository, "pipelineName": "oura_sync"})["assetNodes"]
            assert nodes and all(node["isPartitioned"] for node in nodes), nodes
            selection = sorted(node["assetKey"]["path"] for node in nodes)
            params = {
                "tags": [],
                "assetSelection": [{"path": path} for path in selection],
                "partitionNames": days(START, END),
                "fromFailure": False,
            }
            launched = ui.graphql(LAUNCH_PARTITION_BACKFILL, backfillParams=params)["launchPartitionBackfill"]
            assert launched["__typename"] == "LaunchBackfillSuccess", launched
            backfill_id = launched["backfillId"]
            running.enter_context(process(daemon, env, tmp_path, logs["daemon"]))

            def run_finished() -> dict[str, Any] | None:
                state = backfill_state(ui, backfill_id)
                runs = state["runs"]
                return state if runs and all(run["status"] in FINISHED_RUN for run in runs) else None

            state = wait_for("the daemon to run the backfill", run_finished, timeout_s=180, every_s=1)
            # ONE run over the whole range with every asset in it, and nothing of the backfill left over.
            assert len(state["runs"]) == 1, state["runs"]
            run = state["runs"][0]
            assert run["status"] == "SUCCESS", run
            tags = {tag["key"]: tag["value"] for tag in run["tags"]}
            assert tags["dagster/asset_partition_range_start"] == START.isoformat()
            assert tags["dagster/asset_partition_range_end"] == END.isoformat()
            assert sorted(key["path"] for key in run["assetSelection"]) == selection
            statuses = state["backfill"]["assetBackfillData"]["assetBackfillStatuses"]
            assert sorted(status["assetKey"]["path"] for status in statuses) == selection
            for status in statuses:
                assert status["numPartitionsTargeted"] == len(days(START, END)), status
                assert status["numPartitionsFailed"] == 0, status
                covered = status["numPartitionsInProgress"] + status["numPartitionsMaterialized"]
                assert covered == status["numPartitionsTargeted"], status

            def sync_events() -> list[tuple[str, dict[str, Any]]] | None:
                rows = query(
                    pipeline_env,
                    "SELECT patient_id, payload FROM patient_graph.patient_events "
                    "WHERE event_type = 'wearable_sync' AND (payload->>'runId') = ? ORDER BY patient_id",
                    [run["runId"]],
                )
                return (
                    [(p, json.loads(payload)) for p, payload in rows] if len(rows) >= len(PATIENTS) else None
                )

            events = wait_for("the sensor to record the sync events", sync_events, timeout_s=90, every_s=1)
            target = os.environ.get("OURA_ASSETS_SCREENSHOT")
            if target:
                # For the picture, the backfill marked complete too (the daemon's next 30 s iteration).
                done = lambda: backfill_state(ui, backfill_id)["backfill"]["status"] in FINISHED_BACKFILL  # noqa: E731
                wait_for("the backfill to complete", done, timeout_s=90, every_s=1)
                ui.graphql("mutation { setNuxSeen }")  # what *Skip* on the UI's newsletter pop-up sends
                screenshot(f"{ui.url}/runs/b/{backfill_id}", Path(target).resolve())
        except AssertionError as exc:
            raise with_logs(exc) from None

    assert [patient for patient, _ in events] == list(PATIENTS)
    for _, payload in events:
        assert payload["status"] == "success", payload
        assert (payload["startDay"], payload["endDay"]) == (START.isoformat(), END.isoformat())
        assert payload["rows"], payload
    landed = query(
        pipeline_env,
        "SELECT patient_id, min(day), max(day) FROM patient_graph.wearable_data GROUP BY ALL ORDER BY ALL",
    )
    assert [patient for patient, _, _ in landed] == list(PATIENTS)
    assert all(START <= first <= last <= END for _, first, last in landed), landed
