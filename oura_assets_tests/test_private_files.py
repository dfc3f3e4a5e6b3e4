"""The one writer of owner-only files: mode 0600 from creation, atomic replace, create-once, one winner."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from oura_assets.private_files import write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_creates_parent_and_file_with_mode_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    target = tmp_path / "data" / "secret.json"
    old = os.umask(0)
    try:
        write_private(target, '{"k": "v"}')
    finally:
        os.umask(old)
    assert target.read_text() == '{"k": "v"}'
    assert mode(target) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["secret.json"]


def test_replaces_an_existing_file_and_keeps_it_private(tmp_path: Path) -> None:
    target = tmp_path / "journal"
    target.write_text("old")
    target.chmod(0o644)
    write_private(target, b"new")
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal"]


def test_create_only_refuses_an_existing_file_and_leaves_it_untouched(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    write_private(target, "first", overwrite=False)
    with pytest.raises(FileExistsError):
        write_private(target, "second", overwrite=False)
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


def test_create_only_race_has_one_winner_and_every_reader_sees_a_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "demo-secrets.json"
    contents = [f"{i:02d}" * 50_000 for i in range(8)]
    start = threading.Barrier(len(contents))
    outcomes: list[str] = []
    seen: list[str] = []

    def racer(content: str) -> None:
        start.wait()
        try:
            write_private(target, content, overwrite=False)
            outcomes.append("won")
        except FileExistsError:
            outcomes.append("lost")
        seen.append(target.read_text())

    threads = [threading.Thread(target=racer, args=(c,)) for c in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    # Every racer read the winner's complete file, never a prefix of it.
    assert len(seen) == 8 and set(seen) == {target.read_text()} and seen[0] in contents
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-secrets.json"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_private(tmp_path / "grants.json", "{}")
    assert list(tmp_path.iterdir()) == []
