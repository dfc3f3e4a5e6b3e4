"""The vocabulary and rules of `oura_assets.domain`: plain functions, tested without DuckDB."""

import itertools

import pytest

from oura_assets import domain


def test_raw_collections_are_the_document_collections_then_heartrate():
    assert (*domain.DOCUMENT_COLLECTIONS, "heartrate") == domain.RAW_COLLECTIONS
    assert len(set(domain.RAW_COLLECTIONS)) == len(domain.RAW_COLLECTIONS)


def test_sync_request_statuses_are_queued_running_and_every_result_status():
    assert {"queued", "running", "success", "partial", "failed"} == domain.SYNC_REQUEST_STATUSES
    assert set(domain.SYNC_RESULT_STATUSES) == domain.TERMINAL_SYNC_STATUSES


@pytest.mark.parametrize(
    ("first", "second", "worse"),
    [
        ("success", "success", "success"),
        ("success", "partial", "partial"),
        ("partial", "success", "partial"),
        ("success", "failed", "failed"),
        ("failed", "success", "failed"),
        ("partial", "failed", "failed"),
        ("failed", "partial", "failed"),
    ],
)
def test_a_sync_status_only_gets_worse(first, second, worse):
    assert domain.worse_sync_status(first, second) == worse


def test_worse_sync_status_is_order_free_and_idempotent():
    for a, b in itertools.product(domain.SYNC_RESULT_STATUSES, repeat=2):
        assert domain.worse_sync_status(a, b) == domain.worse_sync_status(b, a)
        assert domain.worse_sync_status(a, a) == a


@pytest.mark.parametrize("status", ["queued", "running", "ok", ""])
def test_worse_sync_status_rejects_a_status_a_result_cannot_have(status):
    with pytest.raises(ValueError, match="unknown sync result status"):
        domain.worse_sync_status("success", status)


@pytest.mark.parametrize(
    ("status", "terminal"),
    [("queued", False), ("running", False), ("success", True), ("partial", True), ("failed", True)],
)
def test_terminal_sync_statuses(status, terminal):
    assert domain.is_terminal_sync_status(status) is terminal


def test_is_terminal_rejects_an_unknown_status():
    with pytest.raises(ValueError, match="unknown sync status"):
        domain.is_terminal_sync_status("done")


@pytest.mark.parametrize(
    ("status", "takes"), [("active", True), ("reconnect_required", True), ("disconnected", False)]
)
def test_a_disconnected_connection_takes_no_refreshed_tokens(status, takes):
    assert domain.takes_refreshed_tokens(status) is takes


@pytest.mark.parametrize(
    ("status", "last_error", "attention"),
    [
        ("active", None, False),
        ("active", "Oura membership expired (403)", True),
        ("reconnect_required", None, True),
        ("reconnect_required", "refresh rejected", True),
        ("disconnected", None, False),
        ("disconnected", "revoked", False),
    ],
)
def test_connections_that_need_the_patient_to_act(status, last_error, attention):
    assert domain.needs_attention(status, last_error) is attention


@pytest.mark.parametrize(
    ("check", "good", "message"),
    [
        (domain.check_connection_status, "active", "unknown connection status"),
        (domain.check_sync_request_status, "queued", "unknown sync status"),
        (domain.check_sync_result_status, "partial", "unknown sync result status"),
        (domain.check_event_type, "wearable_sync", "unknown event type"),
        (domain.check_document_collection, "daily_sleep", "unknown Oura document collection"),
    ],
)
def test_checks_pass_known_words_and_name_the_unknown_one(check, good, message):
    assert check(good) == good
    with pytest.raises(ValueError, match=message) as raised:
        check("nonsense")
    assert "'nonsense'" in str(raised.value)


def test_heartrate_is_not_a_document_collection():
    with pytest.raises(ValueError, match="unknown Oura document collection"):
        domain.check_document_collection("heartrate")
