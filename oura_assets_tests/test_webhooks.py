"""Oura webhooks: the receiver (verification, signatures, dedupe, unknown users, deletion), the subscription
client against the simulator's subscription routes, and the simulator's signed events end to end.

The API is served over real HTTP on loopback (the simulator must reach its callback), beside the simulator
and a throwaway warehouse.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import httpx
import pytest

from oura_assets import warehouse as wh
from oura_assets.api.auth import JwtVerifier, StaticKeys
from oura_assets.api.server import ApiServer
from oura_assets.api.webhooks import event_days
from oura_assets.config import WEBHOOK_PATH, Settings
from oura_assets.oura.webhooks import (
    EVENT_TYPES,
    WEBHOOK_DATA_TYPES,
    WebhookApiError,
    WebhookClient,
    ensure_subscriptions,
    sign_event,
    signature,
    signature_valid,
)
from oura_assets.simulator import SimulatorServer
from oura_assets.simulator.data.queries import documents_for_day
from oura_assets.simulator.data.users import profile
from oura_assets.tls import tls_context
from oura_assets_tests.api_support import ISSUER, new_key, public
from oura_assets_tests.conftest import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from oura_assets_tests.support import UNPACED, ConnectedPatient, query, run_sync

TOKEN = "verify-me-0123456789"
KEY = new_key()


@dataclasses.dataclass
class Receiver:
    url: str
    settings: Settings
    simulator: SimulatorServer

    def post(
        self,
        event: dict[str, Any],
        *,
        secret: str = TEST_CLIENT_SECRET,
        at: float | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> httpx.Response:
        raw = body if body is not None else json.dumps(event).encode()
        signed = sign_event(secret, str(int(time.time() if at is None else at)), raw)
        headers = {**signed, **(headers or {})}
        return httpx.post(self.url, content=raw, headers=headers, timeout=15, verify=tls_context())


@pytest.fixture
def receiver(pipeline_env: Settings, simulator: SimulatorServer) -> Iterator[Receiver]:
    settings = dataclasses.replace(pipeline_env, webhook_verification_token=TOKEN)
    verifier = JwtVerifier(keys=StaticKeys([public(KEY)]), issuer=ISSUER)
    with ApiServer(settings, jwt_verifier=verifier) as server:
        yield Receiver(
            server.url + WEBHOOK_PATH,
            dataclasses.replace(settings, webhook_callback_url=server.url + WEBHOOK_PATH),
            simulator,
        )


def stored(settings: Settings) -> tuple[int, int]:
    """(webhook events, sync requests) in the warehouse."""
    (events,) = query(settings, "SELECT count(*) FROM patient_graph.webhook_events")[0]
    (requests,) = query(settings, "SELECT count(*) FROM patient_graph.sync_requests")[0]
    return events, requests


def a_document(user: str, collection: str = "daily_sleep") -> dict[str, Any]:
    """A document the simulator serves now for `user`, from the most recent day that has one."""
    now = datetime.now(UTC)
    for back in range(1, 15):
        docs = documents_for_day(user, collection, now.date() - timedelta(days=back), now)
        if docs:
            return docs[0]
    raise AssertionError(f"no {collection} document for {user} in two weeks")


def event_for(
    patient: ConnectedPatient, doc: dict[str, Any], event_type: str = "create", data_type: str = "daily_sleep"
) -> dict[str, Any]:
    return {
        "event_type": event_type,
        "data_type": data_type,
        "object_id": doc["id"],
        "event_time": datetime.now(UTC).isoformat(),
        "user_id": profile(patient.ring_user).user_id,
    }


def test_signature_is_uppercase_hex_hmac_sha256_of_timestamp_and_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(b"secret", b"1700000000" + b'{"a":1}', hashlib.sha256).hexdigest().upper()
    assert signature("secret", "1700000000", b'{"a":1}') == expected
    assert signature_valid("secret", "1700000000", b'{"a":1}', expected)
    assert not signature_valid("secret", "1700000001", b'{"a":1}', expected)
    assert not signature_valid("other", "1700000000", b'{"a":1}', expected)


def test_verification_echoes_the_challenge_without_envelope(receiver: Receiver) -> None:
    answer = httpx.get(receiver.url, params={"verification_token": TOKEN, "challenge": "abc123"})
    assert answer.status_code == 200
    assert answer.json() == {"challenge": "abc123"}


@pytest.mark.parametrize("params", [{"verification_token": "wrong", "challenge": "x"}, {"challenge": "x"}])
def test_verification_with_wrong_or_missing_token_is_401(receiver: Receiver, params: dict[str, str]) -> None:
    answer = httpx.get(receiver.url, params=params)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert "x" not in answer.json()["error"]["message"].split()


def test_signed_event_queues_a_sync_of_the_documents_day_range(receiver: Receiver, connect_patient) -> None:
    patient = connect_patient("patient-w1")
    doc = a_document(patient.ring_user)
    answer = receiver.post(event_for(patient, doc))
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert data["status"] == "sync_queued"
    rows = query(
        receiver.settings,
        "SELECT patient_id, start_day, end_day, status FROM patient_graph.sync_requests WHERE sync_id = ?",
        [data["syncId"]],
    )
    assert len(rows) == 1
    patient_id, start, end, status = rows[0]
    assert patient_id == "patient-w1" and status == "queued"
    assert start <= date.fromisoformat(doc["day"]) <= end
    assert stored(receiver.settings) == (1, 1)


def test_bad_signature_is_401_and_stores_nothing(receiver: Receiver, connect_patient) -> None:
    patient = connect_patient("patient-w2")
    before = stored(receiver.settings)
    event = event_for(patient, a_document(patient.ring_user))
    assert receiver.post(event, secret="not-the-client-secret").status_code == 401
    assert receiver.post(event, headers={"x-oura-signature": "00" * 32}).status_code == 401
    # A valid signature over another body does not carry over to this one.
    body = json.dumps(event).encode()
    forged = sign_event(TEST_CLIENT_SECRET, str(int(time.time())), body + b" ")
    assert httpx.post(receiver.url, content=body, headers=forged).status_code == 401
    unsigned = httpx.post(receiver.url, content=body, headers={"content-type": "application/json"})
    assert unsigned.status_code == 401
    assert stored(receiver.settings) == before


@pytest.mark.parametrize("offset_s", [-6 * 60, 6 * 60, -86400])
def test_stale_or_future_timestamp_is_401_and_stores_nothing(
    receiver: Receiver, connect_patient, offset_s: int
) -> None:
    patient = connect_patient("patient-w3")
    before = stored(receiver.settings)
    answer = receiver.post(event_for(patient, a_document(patient.ring_user)), at=time.time() + offset_s)
    assert answer.status_code == 401
    assert "5 minutes" in answer.json()["error"]["message"]
    assert stored(receiver.settings) == before


def test_replayed_event_is_acknowledged_once_and_queues_one_sync(receiver: Receiver, connect_patient) -> None:
    patient = connect_patient("patient-w4")
    event = event_for(patient, a_document(patient.ring_user))
    first = receiver.post(event)
    again = [receiver.post(event) for _ in range(3)]
    assert first.json()["data"]["status"] == "sync_queued"
    assert [a.status_code for a in again] == [200, 200, 200]
    assert {a.json()["data"]["status"] for a in again} == {"duplicate"}
    assert stored(receiver.settings) == (1, 1)
    assert query(receiver.settings, "SELECT redeliveries FROM patient_graph.webhook_events") == [(3,)]


def test_unknown_user_is_acknowledged_and_stores_nothing(receiver: Receiver, connect_patient) -> None:
    connect_patient("patient-w5")
    before = stored(receiver.settings)
    event = {
        "event_type": "create",
        "data_type": "daily_sleep",
        "object_id": "00000000-0000-4000-8000-000000000000",
        "event_time": datetime.now(UTC).isoformat(),
        "user_id": "somebody-we-never-met",
    }
    answer = receiver.post(event)
    assert answer.status_code == 200
    assert answer.json()["data"] == {"status": "unknown_user"}
    assert stored(receiver.settings) == before


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b"not json",
        b'{"event_type": "explode", "data_type": "sleep", "object_id": "x", "user_id": "u"}',
    ],
)
def test_malformed_signed_body_is_422_and_stores_nothing(
    receiver: Receiver, connect_patient, body: bytes
) -> None:
    connect_patient("patient-w6")
    before = stored(receiver.settings)
    answer = receiver.post({}, body=body)
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_request"
    assert stored(receiver.settings) == before


def test_oversized_body_is_refused_before_verification(receiver: Receiver) -> None:
    answer = receiver.post({}, body=b"{" + b" " * 20_000 + b"}")
    assert answer.status_code == 413


def test_delete_event_removes_the_document_and_queues_its_day(receiver: Receiver, connect_patient) -> None:
    patient = connect_patient("patient-w7")
    doc = a_document(patient.ring_user)
    day = date.fromisoformat(doc["day"])
    store = wh.Warehouse(receiver.settings.warehouse_path)
    with store.transaction("test: raw document") as conn:
        wh.replace_raw_documents(conn, "daily_sleep", patient.patient_id, day, day, [doc], datetime.now(UTC))
    answer = receiver.post(event_for(patient, doc, "delete"))
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert data["status"] == "deleted"
    assert (data["startDate"], data["endDate"]) == (day.isoformat(), day.isoformat())
    assert query(
        receiver.settings, "SELECT count(*) FROM oura_raw.daily_sleep WHERE id = ?", [doc["id"]]
    ) == [(0,)]
    assert query(
        receiver.settings, "SELECT change FROM oura_raw.document_revisions WHERE id = ?", [doc["id"]]
    ) == [("deleted",)]
    assert query(
        receiver.settings,
        "SELECT start_day, end_day FROM patient_graph.sync_requests WHERE sync_id = ?",
        [data["syncId"]],
    ) == [(day, day)]


def test_update_of_a_stored_document_syncs_exactly_its_day(receiver: Receiver, connect_patient) -> None:
    patient = connect_patient("patient-w8")
    doc = a_document(patient.ring_user, "daily_readiness")
    day = date.fromisoformat(doc["day"])
    with wh.Warehouse(receiver.settings.warehouse_path).transaction("test: raw document") as conn:
        wh.replace_raw_documents(
            conn, "daily_readiness", patient.patient_id, day, day, [doc], datetime.now(UTC)
        )
    answer = receiver.post(event_for(patient, doc, "update", "daily_readiness"))
    data = answer.json()["data"]
    assert (data["status"], data["startDate"], data["endDate"]) == (
        "sync_queued",
        day.isoformat(),
        day.isoformat(),
    )


def test_event_days_without_a_stored_document_cover_the_lookback_around_the_event() -> None:
    now = datetime(2024, 6, 10, 12, tzinfo=UTC)
    assert event_days(now, None, now, 3) == (date(2024, 6, 6), date(2024, 6, 11))
    assert event_days(now, date(2024, 6, 1), now, 3) == (date(2024, 6, 1), date(2024, 6, 1))
    # A nonsensical event time falls back on the receipt time.
    assert event_days(datetime(1999, 1, 1, tzinfo=UTC), None, now, 0) == (date(2024, 6, 9), date(2024, 6, 11))


def client_for(simulator: SimulatorServer) -> WebhookClient:
    return WebhookClient(simulator.url, TEST_CLIENT_ID, TEST_CLIENT_SECRET)


def test_ensure_creates_one_subscription_per_event_and_data_type_then_keeps_them(receiver: Receiver) -> None:
    with client_for(receiver.simulator) as client:
        first = ensure_subscriptions(client, receiver.settings.webhook_callback_url, TOKEN)
        assert len(first.created) == len(EVENT_TYPES) * len(WEBHOOK_DATA_TYPES) == 30
        second = ensure_subscriptions(client, receiver.settings.webhook_callback_url, TOKEN)
        assert second.created == [] and second.renewed == [] and len(second.kept) == 30
        listed = client.list()
    assert {(s.event_type, s.data_type) for s in listed} == {
        (e, d) for e in EVENT_TYPES for d in WEBHOOK_DATA_TYPES
    }
    assert all(s.callback_url == receiver.settings.webhook_callback_url for s in listed)


def test_ensure_renews_subscriptions_close_to_expiry_and_recreates_deleted_ones(receiver: Receiver) -> None:
    callback = receiver.settings.webhook_callback_url
    with client_for(receiver.simulator) as client:
        ensure_subscriptions(client, callback, TOKEN)
        before = {s.id: s.expiration_time for s in client.list()}
        victim = next(iter(before))
        client.delete(victim)
        assert victim not in {s.id for s in client.list()}
        # The simulator's subscriptions live 30 days: renewing those within 31 days renews all of them.
        later = datetime.now(UTC) + timedelta(hours=1)
        report = ensure_subscriptions(client, callback, TOKEN, renew_within=timedelta(days=31), now=later)
        assert len(report.created) == 1 and len(report.renewed) == 29
        after = {s.id: s.expiration_time for s in client.list()}
    assert len(after) == 30
    assert all(after[i] >= before[i] for i in before if i != victim)


def test_subscription_calls_refuse_wrong_credentials_and_unknown_ids(receiver: Receiver) -> None:
    with (
        WebhookClient(receiver.simulator.url, TEST_CLIENT_ID, "wrong-secret") as bad,
        pytest.raises(WebhookApiError) as refused,
    ):
        bad.list()
    assert refused.value.status == 401 and "wrong-secret" not in str(refused.value)
    with client_for(receiver.simulator) as client:
        for call in (lambda: client.renew("no-such-id"), lambda: client.delete("no-such-id")):
            with pytest.raises(WebhookApiError) as missing:
                call()
            assert missing.value.status == 403


def test_subscription_with_a_wrong_verification_token_is_not_created(receiver: Receiver) -> None:
    with client_for(receiver.simulator) as client:
        with pytest.raises(WebhookApiError) as failed:
            client.create(receiver.settings.webhook_callback_url, "not-our-token", "create", "daily_sleep")
        assert failed.value.status == 400
        assert client.list() == []


def test_simulator_event_reaches_the_receiver_and_queues_the_patients_day(
    receiver: Receiver, connect_patient
) -> None:
    patient = connect_patient("patient-w9")
    connect_patient("patient-other")
    doc = a_document(patient.ring_user)
    with client_for(receiver.simulator) as client:
        ensure_subscriptions(client, receiver.settings.webhook_callback_url, TOKEN)
    emitted = httpx.post(
        receiver.simulator.url + "/_sim/webhooks/emit",
        json={
            "user": patient.ring_user,
            "data_type": "daily_sleep",
            "event_type": "create",
            "day": doc["day"],
            "redeliver": 2,
            "out_of_order": True,
        },
        timeout=30,
    ).json()
    assert emitted["events"] and len(emitted["deliveries"]) == 3 * len(emitted["events"])
    assert {d["status"] for d in emitted["deliveries"]} == {200}
    requests = query(
        receiver.settings,
        "SELECT patient_id, start_day, end_day FROM patient_graph.sync_requests WHERE status = 'queued'",
    )
    assert len(requests) == 1
    patient_id, start, end = requests[0]
    assert patient_id == "patient-w9" and start <= date.fromisoformat(doc["day"]) <= end
    assert query(
        receiver.settings, "SELECT count(*), sum(redeliveries) FROM patient_graph.webhook_events"
    ) == [(len(emitted["events"]), 2 * len(emitted["events"]))]


def test_simulator_sends_create_events_for_documents_that_appear_between_two_instants(
    receiver: Receiver, connect_patient
) -> None:
    patient = connect_patient("patient-w10")
    with client_for(receiver.simulator) as client:
        ensure_subscriptions(client, receiver.settings.webhook_callback_url, TOKEN)
    after = datetime.now(UTC)
    before = after - timedelta(days=2)
    answer = httpx.post(
        receiver.simulator.url + "/_sim/webhooks/changes",
        json={"users": [patient.ring_user], "before": before.isoformat(), "after": after.isoformat()},
        timeout=60,
    ).json()
    kinds = {(e["event_type"], e["data_type"]) for e in answer["events"]}
    assert ("create", "daily_sleep") in kinds or ("create", "daily_activity") in kinds
    assert answer["deliveries"] and {d["status"] for d in answer["deliveries"]} == {200}
    assert query(receiver.settings, "SELECT DISTINCT patient_id FROM patient_graph.sync_requests") == [
        ("patient-w10",)
    ]


def test_simulator_announces_its_own_data_changes_when_watching(receiver: Receiver, connect_patient) -> None:
    """`webhook_watch_s` (on under `make dev`): when the data clock moves past a night and a day, the
    simulator sends their events by itself, signed, and the receiver queues the patient's sync."""
    patient = connect_patient("patient-w17")
    with client_for(receiver.simulator) as client:
        ensure_subscriptions(client, receiver.settings.webhook_callback_url, TOKEN)
    now = datetime.now(UTC)
    control, hub = receiver.simulator.control, receiver.simulator.app.state.webhooks
    control.set_clock(now - timedelta(days=2), frozen=True)
    hub.start_watch(0.1)
    try:
        time.sleep(0.5)
        assert stored(receiver.settings) == (0, 0)  # a still clock changes nothing
        control.set_clock(now, frozen=True)
        deadline = time.monotonic() + 60
        while stored(receiver.settings)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        hub.stop_watch()
    delivered = [d for d in hub.deliveries if d["user_id"] == profile(patient.ring_user).user_id]
    assert delivered and {d["status"] for d in delivered} == {200}
    assert {d["event_type"] for d in delivered} >= {"create"}
    assert query(receiver.settings, "SELECT DISTINCT patient_id FROM patient_graph.sync_requests") == [
        ("patient-w17",)
    ]


def webhook_env(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OURA_WEBHOOK_VERIFICATION_TOKEN", TOKEN)
    monkeypatch.setenv("OURA_WEBHOOK_CALLBACK_URL", receiver.settings.webhook_callback_url)


def test_cli_webhooks_ensure_list_delete(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from oura_assets.cli import main

    webhook_env(receiver, monkeypatch)
    assert main(["webhooks", "ensure"]) == 0
    assert len(json.loads(capsys.readouterr().out)["created"]) == 30
    assert main(["webhooks", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 30 and TEST_CLIENT_SECRET not in json.dumps(listed)
    assert main(["webhooks", "delete", listed[0]["id"]]) == 0
    capsys.readouterr()
    with client_for(receiver.simulator) as client:
        assert len(client.list()) == 29
    assert main(["webhooks", "delete", "--all"]) == 0
    with client_for(receiver.simulator) as client:
        assert client.list() == []


def test_cli_webhooks_ensure_without_a_verification_token_names_the_variable(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from oura_assets.cli import main

    monkeypatch.delenv("OURA_WEBHOOK_VERIFICATION_TOKEN", raising=False)
    assert main(["webhooks", "ensure"]) == 2
    assert "OURA_WEBHOOK_VERIFICATION_TOKEN" in capsys.readouterr().err


def test_daily_job_creates_then_renews_the_subscriptions(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oura_assets.defs.webhooks import webhook_subscriptions_job

    webhook_env(receiver, monkeypatch)
    first = webhook_subscriptions_job.execute_in_process()
    assert first.success
    assert len(first.output_for_node("ensure_webhook_subscriptions")["created"]) == 30
    config = {"ops": {"ensure_webhook_subscriptions": {"config": {"renew_within_days": 31}}}}
    second = webhook_subscriptions_job.execute_in_process(run_config=config)
    report = second.output_for_node("ensure_webhook_subscriptions")
    assert report["created"] == [] and len(report["renewed"]) == 30


def test_daily_job_without_webhook_configuration_succeeds_and_says_so(
    pipeline_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oura_assets.defs.webhooks import webhook_subscriptions_job

    monkeypatch.delenv("OURA_WEBHOOK_VERIFICATION_TOKEN", raising=False)
    result = webhook_subscriptions_job.execute_in_process()
    assert result.success and result.output_for_node("ensure_webhook_subscriptions") == {}


def test_demo_mode_generates_a_stable_verification_token_kept_out_of_repr(tmp_path) -> None:
    from oura_assets.config import load_settings

    env = {"OURA_ASSETS_DEMO": "1", "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb")}
    first, again = load_settings(env), load_settings(env)
    assert (
        first.webhook_verification_token
        and first.webhook_verification_token == again.webhook_verification_token
    )
    assert first.webhook_verification_token != first.client_secret
    assert first.webhook_verification_token not in repr(first)
    assert first.webhook_callback_url == "http://127.0.0.1:8000" + WEBHOOK_PATH
    explicit = load_settings({**env, "OURA_WEBHOOK_VERIFICATION_TOKEN": "mine"})
    assert explicit.webhook_verification_token == "mine"


def test_silent_webhooks_check_counts_documents_no_event_announced(
    receiver: Receiver, connect_patient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oura_assets.defs.resources import WarehouseResource
    from oura_assets.defs.webhooks import webhooks_announced_changes

    patient = connect_patient("patient-w11")
    connected_days_ago(receiver.settings, patient.patient_id, 2)
    announced, silent = (
        a_document(patient.ring_user, "daily_sleep"),
        a_document(patient.ring_user, "daily_activity"),
    )
    store = wh.Warehouse(receiver.settings.warehouse_path)
    now = datetime.now(UTC)
    with store.transaction("test: raw documents") as conn:
        for collection, doc in (("daily_sleep", announced), ("daily_activity", silent)):
            day = date.fromisoformat(doc["day"])
            wh.replace_raw_documents(conn, collection, patient.patient_id, day, day, [doc], now)
    assert receiver.post(event_for(patient, announced, "update")).status_code == 200
    monkeypatch.setenv("OURA_WEBHOOK_VERIFICATION_TOKEN", TOKEN)
    result = webhooks_announced_changes(WarehouseResource(database=str(receiver.settings.warehouse_path)))
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["unannounced_documents"].data == {
        "daily_readiness": 0,
        "daily_sleep": 0,
        "sleep": 0,
        "daily_activity": 1,
        **dict.fromkeys(
            (
                "workout",
                "session",
                "daily_spo2",
                "daily_stress",
                "daily_resilience",
                "daily_cardiovascular_age",
            ),
            0,
        ),
    }
    assert result.metadata["webhook_events"].value == 1
    monkeypatch.delenv("OURA_WEBHOOK_VERIFICATION_TOKEN")
    assert webhooks_announced_changes(
        WarehouseResource(database=str(receiver.settings.warehouse_path))
    ).passed


def test_webhook_calls_are_audited_as_ouras_with_the_patient_they_map_to(
    receiver: Receiver, connect_patient
) -> None:
    patient = connect_patient("patient-w12")
    event = event_for(patient, a_document(patient.ring_user))
    assert receiver.post(event).status_code == 200
    assert receiver.post(event, secret="not-the-client-secret").status_code == 401
    assert httpx.get(receiver.url, params={"verification_token": TOKEN, "challenge": "c"}).status_code == 200
    rows = query(
        receiver.settings,
        "SELECT action, actor, patient_id, outcome, status_code FROM patient_graph.audit_log "
        "WHERE action LIKE 'webhook%' ORDER BY occurred_at",
    )
    assert rows == [
        ("webhook_event", "oura", "patient-w12", "ok", 200),
        ("webhook_event", "oura", None, "unauthorized", 401),
        ("webhook_verification", "oura", None, "ok", 200),
    ]


def test_simulator_changes_can_be_redelivered_out_of_order(receiver: Receiver, connect_patient) -> None:
    patient = connect_patient("patient-w13")
    with client_for(receiver.simulator) as client:
        ensure_subscriptions(client, receiver.settings.webhook_callback_url, TOKEN)
    after = datetime.now(UTC)
    answer = httpx.post(
        receiver.simulator.url + "/_sim/webhooks/changes",
        json={
            "users": [patient.ring_user],
            "before": (after - timedelta(days=2)).isoformat(),
            "after": after.isoformat(),
            "redeliver": 1,
            "out_of_order": True,
        },
        timeout=60,
    ).json()
    events = answer["events"]
    assert events and len(answer["deliveries"]) == 2 * len(events)
    first_copy = [d["object_id"] for d in answer["deliveries"] if d["copy"] == 0]
    assert first_copy == [e["object_id"] for e in reversed(events)]
    assert query(
        receiver.settings, "SELECT count(*), sum(redeliveries) FROM patient_graph.webhook_events"
    ) == [(len(events), len(events))]


def connected_days_ago(settings: Settings, patient_id: str, days: int) -> None:
    """Move a connection's `connected_at` back, as for a patient enrolled days before the pull."""
    with wh.Warehouse(settings.warehouse_path).transaction("test: backdate connection") as conn:
        conn.execute(
            "UPDATE patient_graph.wearable_connections SET connected_at = connected_at - ? "
            "WHERE patient_id = ?",
            [timedelta(days=days), patient_id],
        )


def test_a_new_patients_first_sync_is_history_not_unannounced_changes(
    pipeline_env: Settings, connect_patient
) -> None:
    """The initial sync lands days of history that no webhook announces: no finding, no re-creation."""
    from oura_assets.webhook_coverage import review_coverage

    connect_patient("patient-w16")
    began = datetime.now(UTC) - timedelta(seconds=1)
    end = datetime.now(UTC).date() - timedelta(days=1)
    assert run_sync(end - timedelta(days=3), end, run_config=UNPACED).success
    store = wh.Warehouse(pipeline_env.warehouse_path)
    report = review_coverage(store, pipeline_env, began, datetime.now(UTC))
    assert sum(report.unannounced.values()) == 0 and not report.quiet
    # The same documents, had the patient connected two days earlier, are changes no webhook announced.
    connected_days_ago(pipeline_env, "patient-w16", 2)
    assert sum(review_coverage(store, pipeline_env, began, datetime.now(UTC)).unannounced.values()) > 0


def test_pull_that_finds_only_unannounced_changes_recreates_quiet_subscriptions(
    receiver: Receiver, connect_patient
) -> None:
    from oura_assets.webhook_coverage import review_coverage

    patient = connect_patient("patient-w14")
    connected_days_ago(receiver.settings, patient.patient_id, 2)
    callback = receiver.settings.webhook_callback_url
    with client_for(receiver.simulator) as client:
        ensure_subscriptions(client, callback, TOKEN)
        before = {s.id for s in client.list()}
    store = wh.Warehouse(receiver.settings.warehouse_path)
    began = datetime.now(UTC) - timedelta(seconds=1)
    doc = a_document(patient.ring_user, "daily_activity")
    day = date.fromisoformat(doc["day"])
    with store.transaction("test: a pulled document") as conn:
        wh.replace_raw_documents(
            conn, "daily_activity", patient.patient_id, day, day, [doc], datetime.now(UTC)
        )
    report = review_coverage(store, receiver.settings, began, datetime.now(UTC))
    assert report.unannounced["daily_activity"] == 1 and report.events_recent == 0
    assert report.quiet and len(report.recreated) == 30 and report.error is None
    with client_for(receiver.simulator) as client:
        after = {s.id for s in client.list()}
    assert len(after) == 30 and not (after & before)
    # Once an event has arrived within the day, the same finding is a gap, not silence: nothing is re-created.
    assert receiver.post(event_for(patient, a_document(patient.ring_user, "daily_sleep"))).status_code == 200
    again = review_coverage(store, receiver.settings, began, datetime.now(UTC))
    assert again.unannounced["daily_activity"] == 1 and again.events_recent == 1
    assert not again.quiet and again.recreated == []


def test_nightly_run_reports_unannounced_documents_in_its_metadata(
    pipeline_env: Settings, connect_patient
) -> None:
    from oura_assets.defs.assets import RAW_KEYS

    connect_patient("patient-w15")
    connected_days_ago(pipeline_env, "patient-w15", 2)
    end = datetime.now(UTC).date() - timedelta(days=1)
    result = run_sync(end - timedelta(days=3), end, run_config=UNPACED)
    assert result.success
    materializations = [
        m
        for m in result.asset_materializations_for_node("oura_raw")
        if m.asset_key == RAW_KEYS["daily_activity"]
    ]
    metadata = materializations[0].metadata
    unannounced = metadata["webhook_unannounced_documents"].data
    assert unannounced["daily_activity"] >= 1
    assert unannounced == metadata["webhook_changed_documents"].data  # no webhook announced any of them
    assert metadata["webhooks_configured"].value is False and metadata["webhooks_quiet"].value is False


def test_events_join_a_short_queued_sync_but_not_a_queued_30_day_one(
    receiver: Receiver, connect_patient
) -> None:
    patient = connect_patient("patient-w16")
    readiness, sleep = a_document(patient.ring_user, "daily_readiness"), a_document(patient.ring_user)
    day = date.fromisoformat(readiness["day"])
    store = wh.Warehouse(receiver.settings.warehouse_path)
    with store.transaction("test: stored documents and a queued initial sync") as conn:
        for collection, doc in (("daily_readiness", readiness), ("daily_sleep", sleep)):
            doc_day = date.fromisoformat(doc["day"])
            wh.replace_raw_documents(
                conn, collection, patient.patient_id, doc_day, doc_day, [doc], datetime.now(UTC)
            )
        initial = wh.create_sync_request(
            conn,
            patient_id=patient.patient_id,
            start_day=day - timedelta(days=20),
            end_day=day + timedelta(days=5),
        )
    first = receiver.post(event_for(patient, readiness, "update", "daily_readiness")).json()["data"]
    assert first["syncId"] != initial and first["startDate"] == first["endDate"] == day.isoformat()
    if sleep["day"] == readiness["day"]:  # the same day's other document joins the short request
        second = receiver.post(event_for(patient, sleep, "update")).json()["data"]
        assert second["syncId"] == first["syncId"]
