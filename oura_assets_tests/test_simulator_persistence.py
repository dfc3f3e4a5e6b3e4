"""The simulator's grants survive its restart through `state_path`, stored as digests only.

`make demo` stores tokens issued by an in-process simulator and `make simulator` later serves the same
patients from another process; these tests play that handover with successive `SimulatorServer`s on one file.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from oura_assets.config import load_settings
from oura_assets.simulator import ClientRegistration, SimulatorConfig, SimulatorServer
from oura_assets.simulator.grant_store import TokenRejected
from oura_assets.simulator.grants import digest
from oura_assets.simulator.state import SimulatorState

CLIENT_ID = "persist-client"
SECRET = "persist-secret"
REDIRECT = "http://127.0.0.1:9/callback/oura"
DATA_ROUTE = "/v2/usercollection/personal_info"


def config(state_path: Path | None) -> SimulatorConfig:
    return SimulatorConfig(
        clients={CLIENT_ID: ClientRegistration(SECRET, (REDIRECT,))}, state_path=state_path
    )


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def authorize(http: httpx.Client, server: SimulatorServer, user: str) -> str:
    """The code the consent page hands back for `user`."""
    answer = http.get(
        server.url + "/oauth/authorize",
        params={"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "response_type": "code", "sim_user": user},
    )
    assert answer.status_code == 302
    return parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]


def token(http: httpx.Client, server: SimulatorServer, **form: str) -> httpx.Response:
    return http.post(server.url + "/oauth/token", data=form, auth=(CLIENT_ID, SECRET))


def exchange(http: httpx.Client, server: SimulatorServer, code: str) -> dict[str, str]:
    answer = token(http, server, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    assert answer.status_code == 200, answer.text
    return answer.json()


def data_status(http: httpx.Client, server: SimulatorServer, access_token: str) -> int:
    return http.get(server.url + DATA_ROUTE, headers={"Authorization": f"Bearer {access_token}"}).status_code


def test_tokens_outlive_the_simulator_that_issued_them(tmp_path: Path, http: httpx.Client) -> None:
    path = tmp_path / "simulator-state.json"
    with SimulatorServer(config(path)) as first:
        pair = exchange(http, first, authorize(http, first, "handover-user"))
        assert data_status(http, first, pair["access_token"]) == 200

    with SimulatorServer(config(path)) as second:
        assert data_status(http, second, pair["access_token"]) == 200
        rotated = token(http, second, grant_type="refresh_token", refresh_token=pair["refresh_token"])
        assert rotated.status_code == 200, rotated.text
        fresh = rotated.json()
        assert data_status(http, second, fresh["access_token"]) == 200
        assert data_status(http, second, pair["access_token"]) == 401

    with SimulatorServer(config(path)) as third:
        spent = token(http, third, grant_type="refresh_token", refresh_token=pair["refresh_token"])
        assert (spent.status_code, spent.json()["error"]) == (400, "invalid_grant")
        assert third.control.stats()["spent_refresh_reuse"] == 1
        assert data_status(http, third, pair["access_token"]) == 401
        assert data_status(http, third, fresh["access_token"]) == 200
        again = token(http, third, grant_type="refresh_token", refresh_token=fresh["refresh_token"])
        assert again.status_code == 200, again.text


def test_a_used_code_stays_used_across_a_restart(tmp_path: Path, http: httpx.Client) -> None:
    path = tmp_path / "simulator-state.json"
    with SimulatorServer(config(path)) as first:
        code = authorize(http, first, "code-user")
        pair = exchange(http, first, code)

    with SimulatorServer(config(path)) as second:
        replay = token(http, second, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
        assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")
        # A replayed code revokes its grant (RFC 6749 §4.1.2) ...
        assert data_status(http, second, pair["access_token"]) == 401

    with SimulatorServer(config(path)) as third:
        # ... and that too is remembered.
        assert data_status(http, third, pair["access_token"]) == 401
        refused = token(http, third, grant_type="refresh_token", refresh_token=pair["refresh_token"])
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")


def test_a_revoked_grant_stays_revoked_across_a_restart(tmp_path: Path, http: httpx.Client) -> None:
    path = tmp_path / "simulator-state.json"
    with SimulatorServer(config(path)) as first:
        pair = first.control.issue_tokens("revoked-user", client_id=CLIENT_ID)
        kept = first.control.issue_tokens("kept-user", client_id=CLIENT_ID)
        assert http.post(
            first.url + "/oauth/revoke", params={"access_token": pair["access_token"]}
        ).is_success
        assert data_status(http, first, pair["access_token"]) == 401

    with SimulatorServer(config(path)) as second:
        assert data_status(http, second, pair["access_token"]) == 401
        refused = token(http, second, grant_type="refresh_token", refresh_token=pair["refresh_token"])
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
        assert data_status(http, second, kept["access_token"]) == 200


def test_the_state_file_holds_digests_never_tokens_or_codes(tmp_path: Path, http: httpx.Client) -> None:
    path = tmp_path / "simulator-state.json"
    with SimulatorServer(config(path)) as server:
        code = authorize(http, server, "secret-user")
        pair = exchange(http, server, code)
        rotated = token(http, server, grant_type="refresh_token", refresh_token=pair["refresh_token"]).json()
        extra = server.control.issue_tokens("other-user", client_id=CLIENT_ID)
        pending = authorize(http, server, "pending-user")

    secrets = [
        code,
        pending,
        pair["access_token"],
        pair["refresh_token"],
        rotated["access_token"],
        rotated["refresh_token"],
        extra["access_token"],
        extra["refresh_token"],
    ]
    content = path.read_bytes()
    for value in secrets:
        assert value.encode() not in content
        # The digest is there, so the file really records this value (and is not simply empty).
        assert digest(value).encode() in content
    assert SECRET.encode() not in content
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Written through a temporary file that was renamed into place, so nothing else is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: b"[]", id="not-an-object"),
        pytest.param(lambda raw: raw.replace(b'"version":1', b'"version":99'), id="other-version"),
        pytest.param(lambda raw: raw.replace(b'"revoked":false', b'"revoked":"no"'), id="wrong-type"),
        pytest.param(lambda raw: b"\xff\xfe\x00garbage", id="not-utf8"),
    ],
)
def test_an_unusable_state_file_means_no_grants_and_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[bytes], bytes]
) -> None:
    # The state without HTTP around it: start-up is what is under test, and a server per case is slow.
    path = tmp_path / "simulator-state.json"
    old = SimulatorState(config(path)).issue_tokens("before-damage", client_id=CLIENT_ID)
    path.write_bytes(damage(path.read_bytes()))

    with caplog.at_level(logging.WARNING, logger="oura_assets.simulator"):
        second = SimulatorState(config(path))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert str(path) in warnings[0].getMessage()
    assert "starting with no grants" in warnings[0].getMessage()
    with pytest.raises(TokenRejected):
        second.authenticate(old["access_token"])
    new = second.issue_tokens("after-damage", client_id=CLIENT_ID)
    assert second.authenticate(new["access_token"]).user == "after-damage"

    # That first change replaced the damaged file with a good one.
    assert SimulatorState(config(path)).authenticate(new["access_token"]).user == "after-damage"


def test_an_unreadable_state_file_means_no_grants_and_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "simulator-state.json"
    path.mkdir()  # read_bytes() raises IsADirectoryError, an OSError like a permission error would
    with caplog.at_level(logging.WARNING, logger="oura_assets.simulator"):
        state = SimulatorState(config(path))
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert state.stats()["code_grants"] == 0 and state.grants.grant_count() == 0


def test_a_failed_save_is_logged_and_the_token_still_issued(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    state = SimulatorState(config(blocker / "simulator-state.json"))
    with caplog.at_level(logging.WARNING, logger="oura_assets.simulator"):
        pair = state.issue_tokens("unsaved-user", client_id=CLIENT_ID)
    assert state.authenticate(pair["access_token"]).user == "unsaved-user"
    assert any("could not save" in r.getMessage() for r in caplog.records)


def test_without_a_state_path_nothing_is_written_or_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pair = SimulatorState(config(None)).issue_tokens("memory-user", client_id=CLIENT_ID)
    with pytest.raises(TokenRejected):
        SimulatorState(config(None)).authenticate(pair["access_token"])
    assert list(tmp_path.iterdir()) == []


def test_from_settings_persists_in_demo_mode_only(tmp_path: Path) -> None:
    demo = load_settings({"OURA_ASSETS_DEMO": "1", "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb")})
    assert SimulatorConfig.from_settings(demo).state_path == demo.data_dir / "simulator-state.json"
    assert SimulatorConfig.from_settings(demo, state_path=None).state_path is None
    real = load_settings(
        {
            "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb"),
            "OURA_CLIENT_ID": "real-client",
            "OURA_CLIENT_SECRET": "real-secret",
            "OURA_REDIRECT_URI": "https://example.test/callback",
        },
        require=("oauth",),
    )
    assert SimulatorConfig.from_settings(real).state_path is None
    assert config(None).state_path is None
