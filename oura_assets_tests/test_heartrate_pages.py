"""Heart-rate pages parsed by DuckDB: the envelope read from its ends, the samples windowed, de-duplicated and
screened in columns, and the columns landing exactly as the row-by-row path lands the same samples."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from oura_assets import warehouse as wh
from oura_assets.oura.heartrate_pages import PageError, columns_of_samples, next_token_of, parse_pages
from oura_assets.sync_errors import screen_columns
from oura_assets_tests.support import table_rows

LOW = datetime(2024, 6, 10, tzinfo=UTC)
HIGH = LOW + timedelta(days=1)
PATH = "/v2/usercollection/heartrate"


def page(samples: list, **extra) -> bytes:
    return json.dumps({"data": samples, **extra}).encode()


def hr(minute: int, bpm=60, source="awake", stamp: str | None = None) -> dict:
    moment = LOW + timedelta(minutes=minute)
    return {"bpm": bpm, "source": source, "timestamp": stamp or moment.isoformat()}


@pytest.mark.parametrize(
    ("body", "token"),
    [
        (page([hr(0)], next_token="abc"), "abc"),
        (page([hr(0)], next_token=None), None),
        (page([hr(0)]), None),
        (page([hr(0)], next_token='a"b\\c'), 'a"b\\c'),
        # Not the common shape: read in full, still right.
        (json.dumps({"next_token": "first", "data": [hr(0)]}).encode(), "first"),
        (page([{"note": '", "next_token": "fake"}'}], next_token="real"), "real"),
        (page([{"note": "next_token"}]), None),
        (json.dumps({"data": [hr(0)], "next\\u005ftoken": "x"}).encode().replace(b"\\\\", b"\\"), "x"),
        (b' {"data": [], "meta": {"next_token": "inner"}}', None),
        (page([], next_token=""), None),
        # A token longer than the short tail searched first: found in the longer one.
        (page([hr(0)], next_token="t" * 1000), "t" * 1000),
        (page([{"note": ',"next_token":"x"}' * 40}], next_token="y" * 600), "y" * 600),
    ],
)
def test_next_token_is_read_from_the_page(body, token):
    assert next_token_of(body, PATH) == token
    assert (json.loads(body).get("next_token") or None) == token


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>busy</html>", "not JSON"),
        (b"[1, 2]", "list, not a JSON object"),
        (b'{"items": []}', "without `data`"),
        (b'{"data": {"a": 1}}', "`data` as dict, not a list"),
        (b'{"data": [], "next_token": 5}', "`next_token` that is not a string"),
    ],
)
def test_a_page_that_is_not_the_envelope_is_refused(body, message):
    with pytest.raises(PageError, match=message):
        next_token_of(body, PATH)


def test_a_malformed_page_with_a_readable_envelope_fails_the_parse():
    body = b'{"data": [{"bpm": 60, "source": "awake"},, ], "next_token": null}'
    assert next_token_of(body, PATH) is None  # read from its ends only
    with pytest.raises(PageError, match="not JSON"):
        parse_pages([body], LOW, HIGH, PATH)


def test_samples_are_windowed_deduplicated_and_screened():
    first = page(
        [
            hr(0, bpm=70),
            hr(0, bpm=71, stamp="2024-06-10T00:00:00.000Z"),  # the same instant and source: the later wins
            hr(0, source="rest"),
            hr(-1),  # before the window
            hr(24 * 60),  # the window's end is exclusive
            hr(5, bpm="fast"),
            hr(6, source=None),
            hr(7, bpm=61.0),
            hr(8, bpm=True),
            {"bpm": 60, "source": "awake"},  # no timestamp
            "junk",
        ],
        next_token="t",
    )
    second = page(
        [hr(0, bpm=72, stamp="2024-06-10 00:00:00+0000"), hr(9, stamp="2024-06-10T00:09:00.1234567Z")]
    )
    columns = parse_pages([first, second], LOW, HIGH, PATH)
    assert columns.unreadable == 2
    rows = {
        (r["timestamp"].minute, r["source"]): (r["bpm"], r["landable"]) for r in columns.table.to_pylist()
    }
    assert rows == {
        (0, "awake"): (72, True),
        (0, "rest"): (60, True),
        (5, "awake"): (None, False),
        (6, None): (None, False),
        (7, "awake"): (61, True),
        (8, "awake"): (None, False),
        (9, "awake"): (60, True),
    }
    landable, errors = screen_columns(columns)
    assert landable.num_rows == 4
    assert [e.code for e in errors] == ["rejected_document"]

    assert errors[0].message.startswith("3 heart-rate sample(s) left out; first: ")


def test_repeats_are_found_wherever_the_pages_put_them():
    # Repeats across pages, out of order, in threes, without a source, and samples without an instant (each
    # kept, whatever they share): what is left is the last one seen of each instant and source.
    sourceless = {"bpm": 1, "timestamp": (LOW + timedelta(minutes=5)).isoformat()}
    pages = [
        page(
            [hr(3, bpm=1), hr(1, bpm=1), hr(2, source="rest", bpm=1), hr(4, source=None, bpm=1), sourceless]
        ),
        page(
            [hr(1, bpm=2), {"bpm": 9, "source": "awake"}, hr(3, bpm=2), hr(4, source=None, bpm=2), sourceless]
        ),
        page([hr(1, bpm=3), {"bpm": 9, "source": "awake"}, hr(2, source="awake", bpm=3)]),
    ]
    columns = parse_pages(pages, LOW, HIGH, PATH, keep_unreadable=True)
    rows = [
        (r["timestamp"] and r["timestamp"].minute, r["source"], r["bpm"]) for r in columns.table.to_pylist()
    ]
    kept = [
        (1, "awake", 3), (2, "awake", 3), (2, "rest", 1), (3, "awake", 2), (4, None, None), (5, None, None),
        (None, "awake", None), (None, "awake", None),
    ]  # fmt: skip
    assert sorted(rows, key=str) == sorted(kept, key=str)
    assert columns.unreadable == 2


def test_samples_given_as_values_keep_the_unreadable_for_the_screen():
    _, errors = screen_columns(columns_of_samples([hr(0), "junk", {"bpm": 1}], LOW, HIGH))
    assert errors[0].message == "2 heart-rate sample(s) left out; first: a str, not an object"


def test_columns_land_exactly_as_the_row_by_row_write(tmp_path: Path):
    """The same samples through both writers leave byte-identical tables (documents as DuckDB stores them)."""
    samples = [
        hr(i, bpm=40 + i % 90, source=("rest", "awake", "sleep")[i % 3], stamp=None) for i in range(0, 600, 5)
    ]
    samples += [
        {**hr(601), "timestamp_unix": 1718000000000, "producer_timestamp": "2024-06-10T10:01:37+00:00"},
        {**hr(602, stamp="2024-06-10T10:02:00.000Z"), "note": 'é \u2603 \\ " / \n'},
        {**hr(603), "bpm": 61.0},
    ]
    fetched_at = datetime(2024, 7, 1, tzinfo=UTC)
    tables = []
    for name in ("rows", "columns"):
        store = wh.Warehouse(tmp_path / f"{name}.duckdb")
        store.ensure_schema()
        with store.transaction("test") as conn:
            if name == "rows":
                written = wh.replace_raw_heartrate(conn, "p1", LOW, HIGH, samples, fetched_at)
            else:
                landable, _ = screen_columns(parse_pages([page(samples)], LOW, HIGH, PATH))
                # The first write inserts into an empty window; the second mirrors onto what it holds.
                wh.replace_raw_heartrate_columns(conn, "p1", LOW, HIGH, landable.slice(0, 50), fetched_at)
                written = wh.replace_raw_heartrate_columns(conn, "p1", LOW, HIGH, landable, fetched_at)
        assert written == len(samples)
        with store.connect("test") as conn:
            tables.append(
                conn.execute(
                    "SELECT patient_id, timestamp, source, bpm, document::VARCHAR, fetched_at "
                    "FROM oura_raw.heartrate ORDER BY ALL"
                ).fetchall()
            )
        assert table_rows(store.path, "oura_raw.heartrate")
    assert tables[0] == tables[1]


def test_unreadable_samples_are_counted_when_nothing_is_left_in_the_window():
    columns = parse_pages([page([hr(-5), {"bpm": 60}, "junk"])], LOW, HIGH, PATH)
    assert (len(columns), columns.unreadable) == (0, 2)


def test_stored_counts_are_each_patients_own_window_and_a_count_given_is_trusted(tmp_path: Path):
    store = wh.Warehouse(tmp_path / "warehouse.duckdb")
    store.ensure_schema()
    landable, _ = screen_columns(parse_pages([page([hr(i) for i in range(0, 60, 5)])], LOW, HIGH, PATH))
    fetched_at = datetime(2024, 7, 1, tzinfo=UTC)
    with store.transaction("test") as conn:
        wh.replace_raw_heartrate_columns(conn, "p1", LOW, HIGH, landable, fetched_at)
        wh.replace_raw_heartrate_columns(conn, "p2", LOW, HIGH, landable.slice(0, 3), fetched_at)
        later = HIGH + (HIGH - LOW)
        assert wh.stored_heartrate_counts(
            conn, {"p1": (LOW, HIGH), "p2": (LOW, HIGH), "p3": (LOW, HIGH)}
        ) == {
            "p1": 12,
            "p2": 3,
            "p3": 0,
        }
        assert wh.stored_heartrate_counts(conn, {"p1": (HIGH, later), "p2": (LOW, HIGH)}) == {
            "p1": 0,
            "p2": 3,
        }
        # Told the window is held, the write mirrors it (p2's three samples become the twelve), as it
        # would have found by counting.
        assert wh.replace_raw_heartrate_columns(conn, "p2", LOW, HIGH, landable, fetched_at, stored=3) == 12
        (rows,) = conn.execute("SELECT count(*) FROM oura_raw.heartrate WHERE patient_id = 'p2'").fetchone()
    assert rows == 12


def test_repeats_are_dropped_across_the_chunks_duckdb_hands_over():
    # DuckDB hands a large result over in several Arrow chunks: neighbours compare across their boundaries.
    import pyarrow as pa

    from oura_assets.oura.heartrate_pages import _last_of_each_key

    minute = [0, 0, 1, 2, 2, None, None]
    rows = pa.table(
        {
            "timestamp": pa.array(
                [None if m is None else LOW + timedelta(minutes=m) for m in minute],
                pa.timestamp("us", tz="UTC"),
            ),
            "key_source": ['"awake"', '"awake"', '"awake"', '"awake"', '"rest"', '"awake"', '"awake"'],
            "seen": list(range(7)),
        }
    )
    for table in (rows, pa.Table.from_batches(rows.to_batches(max_chunksize=2))):
        kept = _last_of_each_key(table)
        assert kept.column("seen").to_pylist() == [1, 2, 3, 4, 5, 6]
        assert "key_source" not in kept.column_names


def test_a_bpm_the_warehouse_cannot_store_is_left_out_alone():
    # A whole number past INTEGER's range used to fail the cast, and with it every sample of the patient.
    columns = parse_pages(
        [page([hr(0), hr(1, bpm=2**40), hr(2, bpm=-(2**31)), hr(3, bpm=1e300)])], LOW, HIGH, PATH
    )
    landable, errors = screen_columns(columns)
    assert landable.column("bpm").to_pylist() == [60, -(2**31)]
    assert errors[0].message == (
        "2 heart-rate sample(s) left out; first: `bpm` is 1099511627776, outside the range the warehouse "
        "stores (-2,147,483,648 to 2,147,483,647)"
    )


def test_a_null_source_and_a_missing_one_are_different_samples():
    # Neither can land; each is named by the screen, neither counted as a repeat of the other.
    moment = (LOW + timedelta(minutes=1)).isoformat()
    columns = parse_pages([page([{"bpm": 1, "timestamp": moment}, hr(1, source=None)])], LOW, HIGH, PATH)
    _, errors = screen_columns(columns)
    assert errors[0].message == "2 heart-rate sample(s) left out; first: no `source`"


def test_samples_out_of_time_order_are_handed_over_by_instant():
    columns = parse_pages([page([hr(3), hr(1)]), page([hr(2), hr(0)])], LOW, HIGH, PATH)
    assert [t.minute for t in columns.table.column("timestamp").to_pylist()] == [0, 1, 2, 3]


def test_parses_beyond_the_cores_wait_their_turn(monkeypatch):
    # A run keeps many patients in flight for Oura's latency; their parses take the cores in turn.
    import threading
    import time

    from oura_assets.oura import heartrate_pages

    monkeypatch.setattr(heartrate_pages, "_usable_cores", lambda: 2)
    monkeypatch.setattr(heartrate_pages, "_parser", None)
    running, most, lock = 0, 0, threading.Lock()
    parse = heartrate_pages._parse

    def counted(*args, **kwargs):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        try:
            return parse(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(heartrate_pages, "_parse", counted)
    threads = [
        threading.Thread(target=parse_pages, args=([page([hr(i)])], LOW, HIGH, PATH)) for i in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2


def test_a_forked_child_parses_while_its_parent_holds_every_slot(monkeypatch):
    import multiprocessing

    from oura_assets.oura import heartrate_pages

    monkeypatch.setattr(heartrate_pages, "_usable_cores", lambda: 1)
    monkeypatch.setattr(heartrate_pages, "_parser", None)
    with heartrate_pages._process_parser().slots:
        child = multiprocessing.get_context("fork").Process(
            target=parse_pages, args=([page([hr(0)])], LOW, HIGH, PATH)
        )
        child.start()
        child.join(timeout=60)
    if child.is_alive():  # stuck on a slot it inherited as held
        child.kill()
    assert child.exitcode == 0
