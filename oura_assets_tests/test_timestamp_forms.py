"""Date-times in every form Oura's framework (FastAPI on pydantic 2) reads and may write: a `T` or a space
between date and time, `Z`, `±HH:MM` or `±HHMM` offsets, fractions. Each parser on our side (the client's
`parse_instant`, the normalizers' `to_utc_z` and heart-rate frames, the warehouse's TIMESTAMPTZ cast) reads
every form as the same instant, and the simulator accepts them in its query parameters."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from oura_assets import warehouse as wh
from oura_assets.normalize import HeartRateDayStats, day_offsets, heart_rate_day_stats, to_utc_z
from oura_assets.oura.client import parse_instant
from oura_assets.simulator import ClientRegistration, SimulatorConfig, SimulatorServer
from oura_assets.simulator.readings import Readings, render, render_timestamp

INSTANT = datetime(2024, 6, 10, 5, 0, 7, tzinfo=UTC)
FORMS = [
    "2024-06-10T07:00:07+02:00",
    "2024-06-10 07:00:07+02:00",
    "2024-06-10T07:00:07+0200",
    "2024-06-10 07:00:07+0200",
    "2024-06-10 07:00:07.000+0200",
    "2024-06-10T05:00:07.000Z",
    "2024-06-10 05:00:07Z",
    "2024-06-10T05:00:07+0000",
    "2024-06-10T00:30:07-0430",
    "2024-06-10 00:30:07-04:30",
]


@pytest.mark.parametrize("text", FORMS)
def test_client_parse_instant_reads_every_form(text):
    assert parse_instant(text) == INSTANT


@pytest.mark.parametrize("text", FORMS)
def test_to_utc_z_reads_every_form(text):
    assert to_utc_z(text) == "2024-06-10T05:00:07Z"


def test_heart_rate_frames_read_every_form():
    samples = [{"timestamp": text, "bpm": 60 + i, "source": "awake"} for i, text in enumerate(FORMS)]
    stats = heart_rate_day_stats(samples, {date(2024, 6, 10): timedelta(0)}, [date(2024, 6, 10)])
    # One instant and source: one sample, the lowest bpm of the copies.
    assert stats == {date(2024, 6, 10): HeartRateDayStats(60, 60, 60.0, 1, timedelta(0))}


def test_day_offsets_read_compact_offsets_and_a_space():
    docs = [{"id": "r1", "day": "2024-06-10", "timestamp": "2024-06-10 00:00:00-0430"}]
    assert day_offsets(docs, [], []) == {date(2024, 6, 10): -timedelta(hours=4, minutes=30)}


def test_warehouse_heartrate_cast_reads_every_form(tmp_path):
    store = wh.Warehouse(tmp_path / "w.duckdb")
    store.ensure_schema()
    samples = [{"timestamp": text, "bpm": 60, "source": "awake"} for text in FORMS]
    with store.transaction("test: forms") as conn:
        written = wh.replace_raw_heartrate(
            conn, "p", INSTANT - timedelta(hours=1), INSTANT + timedelta(hours=1), samples, INSTANT
        )
        rows = conn.execute("SELECT timestamp FROM oura_raw.heartrate").fetchall()
    assert written == 1
    assert rows == [(INSTANT,)]


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("iso", "2024-06-10T07:00:07+02:00"),
        ("space", "2024-06-10 07:00:07+02:00"),
        ("compact_offset", "2024-06-10T07:00:07+0200"),
        ("space_compact_offset", "2024-06-10 07:00:07+0200"),
    ],
)
def test_the_simulator_renders_each_timestamp_reading(style, expected):
    assert render_timestamp("2024-06-10T07:00:07+02:00", style) == expected
    assert render_timestamp("2024-06-10T05:00:07.000Z", style).endswith("05:00:07.000Z")
    doc = {"day": "2024-06-10", "bedtime_start": "2024-06-10T07:00:07+02:00", "hr": {"items": [1.0, None]}}
    assert render(doc, style) == {**doc, "bedtime_start": expected}


def test_unknown_readings_are_refused():
    with pytest.raises(ValueError, match="date_ends"):
        Readings(date_ends="sideways")
    with pytest.raises(ValueError, match="unknown reading"):
        Readings().updated({"end_dates": "inclusive"})


@pytest.fixture(scope="module")
def simulator():
    config = SimulatorConfig(clients={"c": ClientRegistration("s", ("http://127.0.0.1:9/cb",))})
    with SimulatorServer(config) as server:
        server.control.set_clock(datetime(2024, 6, 20, 12, tzinfo=UTC), frozen=True)
        yield server


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-06-10T00:00:00+00:00", "2024-06-11T00:00:00+00:00"),
        ("2024-06-10 00:00:00+00:00", "2024-06-11 00:00:00+00:00"),
        ("2024-06-10T02:00:00+0200", "2024-06-11T02:00:00+0200"),
        ("2024-06-10 02:00:00+0200", "2024-06-11 02:00:00.000+0200"),
        ("2024-06-10T00:00:00Z", "2024-06-11 00:00:00z"),
    ],
)
def test_the_simulator_accepts_every_form_in_heartrate_parameters(simulator, start, end):
    token = simulator.control.issue_tokens("forms-user")["access_token"]
    answer = httpx.get(
        f"{simulator.url}/v2/usercollection/heartrate",
        params={"start_datetime": start, "end_datetime": end},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200, answer.text
    stamps = [parse_instant(row["timestamp"]) for row in answer.json()["data"]]
    assert stamps and all(
        datetime(2024, 6, 10, tzinfo=UTC) <= s <= datetime(2024, 6, 11, tzinfo=UTC) for s in stamps
    )


def test_the_simulator_reads_every_form_in_document_parameters_as_the_same_instant(simulator):
    token = simulator.control.issue_tokens("forms-user")["access_token"]

    def days(end: str) -> list[str]:
        answer = httpx.get(
            f"{simulator.url}/v2/usercollection/daily_activity",
            params={"start_date": "2024-06-08", "end_date": end},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 200, answer.text
        return [doc["day"] for doc in answer.json()["data"]]

    expected = days("2024-06-12T03:00:00+03:00")
    assert expected
    for form in ("2024-06-12 03:00:00+03:00", "2024-06-12T03:00:00+0300", "2024-06-12 00:00:00Z"):
        assert days(form) == expected, form


def test_an_unencoded_plus_is_still_refused(simulator):
    token = simulator.control.issue_tokens("forms-user")["access_token"]
    answer = httpx.get(
        f"{simulator.url}/v2/usercollection/heartrate?start_datetime=2024-06-10T00:00:00+02:00",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", "start_datetime"]
