"""What one window write of a collection's documents reports and keeps: new, changed, unchanged, deleted."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from oura_assets import warehouse as wh

D = date(2024, 6, 10)
FIRST = datetime(2024, 6, 20, 12, tzinfo=UTC)
SECOND = FIRST + timedelta(days=1)


def doc(doc_id: str, day: date, **extra: Any) -> dict[str, Any]:
    return {"id": doc_id, "day": day.isoformat(), "score": 80, **extra}


def test_a_window_write_counts_each_kind_and_keeps_replaced_versions(tmp_path: Path) -> None:
    store = wh.Warehouse(tmp_path / "w.duckdb")
    window = (D, D + timedelta(days=2))
    with store.transaction("test") as conn:
        first = [doc("a", D), doc("b", D + timedelta(days=1)), doc("c", D + timedelta(days=2))]
        assert wh.mirror_raw_documents(conn, "daily_sleep", "p1", *window, first, FIRST) == (
            wh.DocumentChanges(new=3)
        )
        # Another patient's row in the same days is never this patient's deletion.
        wh.mirror_raw_documents(conn, "daily_sleep", "p2", *window, [doc("a", D)], FIRST)
    with store.transaction("test") as conn:
        # a unchanged, b revised, c gone, d new; the same document twice: the last one wins.
        again = [doc("a", D), doc("b", D + timedelta(days=1), score=1), doc("d", D), doc("d", D, score=3)]
        changes = wh.mirror_raw_documents(conn, "daily_sleep", "p1", *window, again, SECOND)
        assert changes == wh.DocumentChanges(new=1, changed=1, unchanged=1, deleted=1)
        rows = conn.execute(
            "SELECT id, revision, document->>'score', first_seen_at, last_changed_at "
            "FROM oura_raw.daily_sleep WHERE patient_id = 'p1' ORDER BY id"
        ).fetchall()
        assert rows == [
            ("a", 0, "80", FIRST, FIRST),
            ("b", 1, "1", FIRST, SECOND),
            ("d", 0, "3", SECOND, SECOND),
        ]
        history = conn.execute(
            "SELECT id, revision, change, document->>'score', superseded_at FROM oura_raw.document_revisions "
            "WHERE patient_id = 'p1' ORDER BY id"
        ).fetchall()
        assert history == [("b", 0, "changed", "80", SECOND), ("c", 0, "deleted", "80", SECOND)]
        assert conn.execute(
            "SELECT count(*) FROM oura_raw.daily_sleep WHERE patient_id = 'p2'"
        ).fetchone() == (1,)
    with store.transaction("test") as conn:
        # The same answer again changes nothing and writes no history.
        same = [doc("a", D), doc("b", D + timedelta(days=1), score=1), doc("d", D, score=3)]
        changes = wh.mirror_raw_documents(conn, "daily_sleep", "p1", *window, same, SECOND)
        assert changes == wh.DocumentChanges(unchanged=3)
        assert conn.execute("SELECT count(*) FROM oura_raw.document_revisions").fetchone() == (2,)
        # Nothing returned: every stored document of the window goes to the history as deleted.
        changes = wh.mirror_raw_documents(conn, "daily_sleep", "p1", *window, [], SECOND + timedelta(hours=1))
        assert changes == wh.DocumentChanges(deleted=3)
        assert conn.execute(
            "SELECT count(*) FROM oura_raw.daily_sleep WHERE patient_id = 'p1'"
        ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM oura_raw.document_revisions").fetchone() == (5,)
        # A collection with nothing fetched and nothing stored in the window: nothing to do, nothing left.
        assert wh.mirror_raw_documents(conn, "workout", "p1", *window, [], SECOND) == wh.DocumentChanges()
        leftovers = "SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name LIKE '_staged%'"
        assert conn.execute(leftovers).fetchone() == (0,)


def test_a_document_whose_day_moved_into_the_window_replaces_its_stored_version(tmp_path: Path) -> None:
    """The stored versions are looked up as the window's rows plus the fetched ids stored on other days: a
    document Oura now dates inside the window, stored under a day outside it, is the same document changed
    (one row, its old version in the history), not a new one beside it; another patient's document with the
    same id is not it."""
    store = wh.Warehouse(tmp_path / "w.duckdb")
    earlier = D - timedelta(days=5)
    with store.transaction("test") as conn:
        wh.mirror_raw_documents(conn, "daily_sleep", "p1", earlier, earlier, [doc("m", earlier)], FIRST)
        wh.mirror_raw_documents(conn, "daily_sleep", "p2", D, D, [doc("m", D)], FIRST)
    with store.transaction("test") as conn:
        changes = wh.mirror_raw_documents(conn, "daily_sleep", "p1", D, D, [doc("m", D)], SECOND)
        assert changes == wh.DocumentChanges(changed=1)
        assert conn.execute(
            "SELECT patient_id, day, revision, first_seen_at FROM oura_raw.daily_sleep WHERE id = 'm' "
            "ORDER BY patient_id"
        ).fetchall() == [("p1", D, 1, FIRST), ("p2", D, 0, FIRST)]
        assert conn.execute(
            "SELECT patient_id, day, change FROM oura_raw.document_revisions WHERE id = 'm'"
        ).fetchall() == [("p1", earlier, "changed")]
