"""What each route does, as plain blocking functions (the routes run them in a worker thread).

Kept apart from Starlette so the connection flow reads top to bottom without HTTP plumbing. Two rules shape
every method: HTTP to Oura never happens while the warehouse lock is held (a slow Oura must not stall
Dagster runs and sensors), and the writes that belong together — tokens, event, initial sync request — land in
one transaction. Nothing here logs or returns a token, code, state or client secret.

The pair a code exchange returns is journaled (encrypted and durable: a file, or with several hosts a
PostgreSQL row; token_journal.py) before anything that can block, and the callback holds the entry's lock
until the warehouse has the pair. An API that dies in between
leaves the entry unlocked: `recover_grants`, run when the API starts and before each callback, stores it (the
patient consented and still expects the connection) or, when the grant is no longer the patient's newest or
the callback had already answered a failure, revokes it at Oura. No grant is left that nobody holds.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from oura_assets import coordination, ledger
from oura_assets import warehouse as wh
from oura_assets.api.audit import AuditTrail
from oura_assets.api.first_data import FirstDataLane, FirstDataRun
from oura_assets.api.responses import ApiError
from oura_assets.api.state import STATE_TTL, new_state, state_hash, well_formed
from oura_assets.clock import as_utc, utc_now
from oura_assets.config import Settings
from oura_assets.domain import SOURCE
from oura_assets.erasure import PatientEraser
from oura_assets.oura.client import OuraClient, OuraError, OuraUnauthorized, RetryPolicy
from oura_assets.oura.oauth import OuraOAuthApp, TokenEndpointError, TokenSet
from oura_assets.token_journal import GrantEntry, GrantJournal, JournalUnreadable, TokenJournal
from oura_assets.tokens import TokenCipher, store_granted_tokens

log = logging.getLogger("oura_assets.api")

INITIAL_SYNC_DAYS = 30
FIRST_DATA_DAYS = 3
"""The first-data sync a new connection queues ahead of its 30-day initial sync: today and the two days
before, the days a patient looks for first (last night's sleep, today's readiness). A small range is one
short run, so the patient's most recent day is queryable seconds after the callback; the 30 days follow in
their own run."""
MAX_SYNC_DAYS = 366
# No Oura ring recorded anything before this: the floor for a sync range whatever OURA_ASSETS_START_DATE says,
# and what keeps date arithmetic on a caller's dates far from `date.min` (0001-01-01 once answered a 500).
EARLIEST_DAY = date(2000, 1, 1)
# Once Oura has exchanged the code it is spent: failing the final write would cost the patient the whole
# connect flow, so that one write waits far longer for the warehouse than a routine request does.
GRANT_STORE_WAIT_S = 60.0


def _iso(value: date | datetime | None) -> str | None:
    if value is None:
        return None
    return (as_utc(value) if isinstance(value, datetime) else value).isoformat()


class _JustIssuedToken:
    """The access token the code exchange just returned, for one `personal_info` call (nothing to refresh)."""

    def __init__(self, access_token: str) -> None:
        self._token = access_token

    def get(self) -> str:
        return self._token

    def force_refresh(self, rejected: str) -> str:
        raise OuraUnauthorized("Oura rejected the access token it had just issued", status=401)


def _audit(audit: AuditTrail | None, conn: Any, status_code: int = 200) -> None:
    """The action's audit entry, on its own connection: called as the action's last write (api/audit.py)."""
    if audit is not None:
        audit.record(conn, status_code)


def not_connected(message: str = "no active Oura connection for this patient; connect first") -> ApiError:
    return ApiError(409, "not_connected", message)


def invalid_request(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message)


def sync_range(start: date | None, end: date | None, *, today: date, first: date) -> tuple[date, date]:
    """The days a sync covers, or 422: each given date within [first partition, today], at most a year.

    Bounds come before any arithmetic, so no caller's date can overflow `date`. Without a `startDate` the
    range is the last 30 days up to `endDate`, cut at the first partition rather than refused.
    """
    floor = max(first, EARLIEST_DAY)
    for name, day in (("startDate", start), ("endDate", end)):
        if day is not None and day < floor:
            raise invalid_request(f"{name} must not be before {floor.isoformat()} (OURA_ASSETS_START_DATE)")
        if day is not None and day > today:
            raise invalid_request(f"{name} must not be after today ({today.isoformat()}, UTC)")
    end = end or today
    start = start or max(floor, end - timedelta(days=INITIAL_SYNC_DAYS - 1))
    if start > end:
        raise invalid_request("startDate must not be after endDate")
    if (end - start).days + 1 > MAX_SYNC_DAYS:
        raise invalid_request(f"a sync covers at most {MAX_SYNC_DAYS} days")
    return start, end


@dataclass
class ConnectionService:
    settings: Settings
    warehouse: wh.Warehouse
    oauth: OuraOAuthApp
    cipher: TokenCipher
    now: Callable[[], datetime] = utc_now
    grants: GrantJournal = field(default=None)  # type: ignore[assignment]  # set in __post_init__
    first_data_lane: FirstDataLane | None = None
    """When set, a new connection's first-data run is executed by this process (api/first_data.py)."""

    def __post_init__(self) -> None:
        if self.grants is None:
            store = coordination.from_settings(self.settings).journal_store()
            self.grants = GrantJournal(TokenJournal(store, self.cipher))

    def today(self) -> date:
        # Days are UTC days here, like the daily partitions (whose last one is today, UTC).
        return as_utc(self.now()).date()

    def start_connect(self, patient_id: str, audit: AuditTrail | None = None) -> dict[str, Any]:
        state = new_state()
        now = self.now()
        expires_at = now + STATE_TTL
        for attempt in self.warehouse.attempts("api: save oauth state"):
            with attempt as conn:
                # Expired states are dead weight (consume refuses them), so each connect clears them out, in
                # the transaction that saves the new one. Cheap and bounded: since every connect purges, only
                # the states that expired since the previous connect are left to delete.
                purged = wh.purge_oauth_states(conn, now)
                wh.save_oauth_state(conn, state_hash(state), patient_id, expires_at)
                _audit(audit, conn)
        if purged:
            log.debug("purged %d expired OAuth states", purged)
        return {"authUrl": self.oauth.authorization_url(state), "expiresAt": _iso(expires_at)}

    def _consume_state(self, state: str | None) -> str | None:
        if not well_formed(state):
            return None
        assert state is not None
        patient_id = None
        for attempt in self.warehouse.attempts("api: consume oauth state"):
            with attempt as conn:
                patient_id = wh.consume_oauth_state(conn, state_hash(state), self.now())
        return patient_id  # after the loop: a try that lost a DuckLake conflict at COMMIT runs again

    def complete_callback(
        self, code: str | None, state: str | None, error: str | None, audit: AuditTrail | None = None
    ) -> dict[str, Any]:
        if error is not None:
            # The patient said no (or Oura refused): spend the state so it cannot be replayed, store nothing.
            denied_by = self._consume_state(state)
            if audit is not None and denied_by is not None:
                audit.identify(denied_by)
            if error == "access_denied":
                raise ApiError(400, "access_denied", "the Oura account holder did not grant access")
            raise ApiError(400, "oauth_error", "Oura did not authorize the connection; start again")
        if not state:
            raise ApiError(400, "invalid_state", "the state parameter is missing")
        if not code:
            raise invalid_request("the code parameter is missing")
        patient_id = self._consume_state(state)
        if patient_id is None:
            raise ApiError(400, "invalid_state", "the state is unknown, expired or already used; start again")
        if audit is not None:
            audit.identify(patient_id)  # the state was bound to this patient when they asked to connect
        self.recover_grants_quietly()

        try:
            tokens = self.oauth.exchange_code(code)
        except TokenEndpointError as exc:
            # The message is secret-free by construction (oauth.py), but the type and status say enough.
            log.warning(
                "code exchange for patient %s failed (%s, HTTP %s, %s)",
                patient_id,
                type(exc).__name__,
                exc.status,
                exc.error,
            )
            if exc.error or (exc.status is not None and 400 <= exc.status < 500):
                raise ApiError(
                    400,
                    "invalid_code",
                    "Oura did not accept the authorization code; start the connection again",
                ) from None
            raise ApiError(
                502,
                "oura_unavailable",
                "Oura could not be reached to finish the connection; start again shortly",
            ) from None
        entry = GrantEntry(self.grants.new_name(), patient_id, tokens, self.now(), disposition="store")
        with self.grants.held(entry.name, wait=True):
            journaled = self._journal_grant(entry)
            oura_user_id = self._oura_user_id(patient_id, tokens)
            try:
                sync_id, first_sync_id, start, today = self._store_grant(
                    entry, oura_user_id, audit, reserve_first_data=self.first_data_lane is not None
                )
            except Exception:
                # The code is spent and the tokens cannot be stored: give the grant back rather than orphan
                # it; a grant Oura would not take back is revoked again by the next recovery.
                if self._revoke_quietly(patient_id, tokens.access_token):
                    self.grants.journal.remove(entry.name)
                elif journaled:
                    self._journal_grant(replace(entry, disposition="revoke"))
                raise
            self.grants.journal.remove(entry.name)
        first_start = max(start, today - timedelta(days=FIRST_DATA_DAYS - 1))
        if self.first_data_lane is not None:
            self.first_data_lane.submit(FirstDataRun(patient_id, first_sync_id, first_start, today))
        log.info(
            "patient %s connected Oura; first-data sync %s and initial sync %s queued for %s..%s",
            patient_id,
            first_sync_id,
            sync_id,
            start,
            today,
        )
        return {
            "status": "active",
            "source": SOURCE,
            "patientId": patient_id,
            "syncId": sync_id,
            "startDate": start.isoformat(),
            "endDate": today.isoformat(),
            "firstDataSyncId": first_sync_id,
        }

    def _journal_grant(self, entry: GrantEntry) -> bool:
        try:
            self.grants.write(entry)
        except OSError as exc:
            # Not a reason to fail the patient's connection: the warehouse write comes next.
            log.error("could not journal patient %s's Oura grant (%s)", entry.patient_id, type(exc).__name__)
            return False
        return True

    def _store_grant(
        self,
        entry: GrantEntry,
        oura_user_id: str | None,
        audit: AuditTrail | None = None,
        *,
        reserve_first_data: bool = False,
    ) -> tuple[str, str, date, date]:
        """Store the grant, record `wearable_connected` and queue the first-data and initial syncs, in one
        transaction: (initial sync id, first-data sync id, initial start, today)."""
        assert entry.patient_id is not None
        patient_id, tokens = entry.patient_id, entry.tokens
        today = self.today()
        start = today - timedelta(days=INITIAL_SYNC_DAYS - 1)
        for attempt in self.warehouse.attempts("api: store oura connection", timeout_s=GRANT_STORE_WAIT_S):
            with attempt as conn:
                previous = wh.get_connection(conn, patient_id)
                store_granted_tokens(
                    conn,
                    patient_id,
                    tokens,
                    self.cipher,
                    oura_user_id=oura_user_id,
                    connected_at=entry.granted_at,
                )
                wh.record_event(
                    conn,
                    patient_id=patient_id,
                    event_type="wearable_connected",
                    event_id=f"wearable_connected:{patient_id}:{uuid.uuid4().hex}",
                    payload={
                        "source": SOURCE,
                        "ouraUserId": oura_user_id,
                        "scopes": list(tokens.scopes),
                        "reconnect": previous is not None,
                    },
                )
                # The most recent days first, in their own short run (the run queue runs one run per patient
                # at a time, this one first: `dagster.yaml`); the 30 days, re-reading those days too, right
                # after.
                first_start = max(start, today - timedelta(days=FIRST_DATA_DAYS - 1))
                first_sync_id = ledger.request_sync(
                    conn, patient_id=patient_id, start_day=first_start, end_day=today
                )
                if reserve_first_data:  # this process runs it (api/first_data.py), not the request sensor
                    ledger.reserve_request(conn, first_sync_id)
                sync_id = ledger.request_sync(conn, patient_id=patient_id, start_day=start, end_day=today)
                _audit(audit, conn)
        wh.signal_sync_queued(self.warehouse.path)
        return sync_id, first_sync_id, start, today

    def recover_grants(self) -> dict[str, int]:
        """Settle the grants of callbacks that died between the code exchange and the warehouse write.

        An entry whose lock is held belongs to a callback still at work and is left alone. A grant whose
        patient has no newer connection is stored, as its callback would have (event and initial sync
        included); one that is superseded, was already answered as a failure or names no patient is revoked
        at Oura. An entry that cannot be settled now (warehouse busy, Oura unreachable) stays for next time.
        """
        counts = {"stored": 0, "revoked": 0, "left": 0}
        for name in self.grants.names():
            with self.grants.held(name, wait=False) as mine:
                if not mine:
                    continue
                try:
                    entry = self.grants.read(name)
                except JournalUnreadable as exc:
                    log.error("cannot read Oura grant journal entry %s (%s); leaving it", name, exc)
                    counts["left"] += 1
                    continue
                if entry is None:
                    continue
                try:
                    outcome = self._settle_grant(entry)
                except Exception as exc:
                    log.warning("could not settle Oura grant %s yet (%s)", name, type(exc).__name__)
                    outcome = "left"
                counts[outcome] += 1
        if counts["stored"] or counts["revoked"]:
            log.warning("recovered Oura grants of interrupted callbacks: %s", counts)
        return counts

    def recover_grants_quietly(self) -> None:
        """`recover_grants` where a failure must not stop the caller (start-up, a patient's callback)."""
        try:
            self.recover_grants()
        except Exception as exc:
            log.warning("recovering interrupted Oura grants failed (%s); retried later", type(exc).__name__)

    def _settle_grant(self, entry: GrantEntry) -> str:
        if entry.disposition == "store" and entry.patient_id is not None:
            with self.warehouse.connect("api: recover oura grant") as conn:
                current = wh.get_connection(conn, entry.patient_id)
            connected_at = as_utc(current.connected_at) if current and current.connected_at else None
            if connected_at is not None and connected_at == entry.granted_at:
                self.grants.journal.remove(entry.name)  # stored before the process died
                return "stored"
            if connected_at is None or connected_at < entry.granted_at:
                oura_user_id = self._oura_user_id(entry.patient_id, entry.tokens)
                sync_id, _, _, _ = self._store_grant(entry, oura_user_id)
                log.warning(
                    "stored patient %s's Oura grant left by an interrupted callback; sync %s queued",
                    entry.patient_id,
                    sync_id,
                )
                self.grants.journal.remove(entry.name)
                return "stored"
        if not self._revoke_quietly(entry.patient_id or "(unknown)", entry.tokens.access_token):
            return "left"
        self.grants.journal.remove(entry.name)
        return "revoked"

    def _oura_user_id(self, patient_id: str, tokens: TokenSet) -> str | None:
        """Oura's id for the account, from personal_info. Optional: a connection works without it."""
        # A patient's browser is waiting on this: a short retry budget, not a batch job's.
        retry = RetryPolicy(attempts=2, wait_budget_s=5.0)
        try:
            with OuraClient(
                self.settings.api_base_url, _JustIssuedToken(tokens.access_token), retry=retry
            ) as client:
                info = client.personal_info()
        except OuraError as exc:
            log.warning("personal_info for patient %s failed (%s)", patient_id, type(exc).__name__)
            return None
        user_id = info.get("id") if isinstance(info, dict) else None
        return str(user_id) if user_id else None

    def _revoke_quietly(self, patient_id: str, access_token: str) -> bool:
        try:
            self.oauth.revoke(access_token)
        except Exception as exc:
            log.warning("revoking patient %s's Oura token failed (%s)", patient_id, type(exc).__name__)
            return False
        return True

    def request_sync(
        self, patient_id: str, start: date | None, end: date | None, audit: AuditTrail | None = None
    ) -> dict[str, Any]:
        start, end = sync_range(start, end, today=self.today(), first=self.settings.start_date)
        for attempt in self.warehouse.attempts("api: queue sync request"):
            with attempt as conn:
                connection = wh.get_connection(conn, patient_id)
                if connection is None or connection.status != "active":
                    raise not_connected()
                sync_id = ledger.request_sync(conn, patient_id=patient_id, start_day=start, end_day=end)
                _audit(audit, conn, 202)
        wh.signal_sync_queued(self.warehouse.path)
        log.info("patient %s queued sync %s for %s..%s", patient_id, sync_id, start, end)
        return {
            "syncId": sync_id,
            "status": "queued",
            "source": SOURCE,
            "startDate": start.isoformat(),
            "endDate": end.isoformat(),
        }

    def sync_status(self, patient_id: str, sync_id: str, audit: AuditTrail | None = None) -> dict[str, Any]:
        with self.warehouse.connect("api: read sync request") as conn:
            request = wh.get_sync_request(conn, sync_id)
            # Someone else's sync answers exactly like one that does not exist.
            if request is None or request.patient_id != patient_id:
                raise ApiError(404, "not_found", "no such sync for this patient")
            _audit(audit, conn)
        return {
            "syncId": request.sync_id,
            "source": SOURCE,
            "status": request.status,
            "startDate": _iso(request.start_day),
            "endDate": _iso(request.end_day),
            "runId": request.run_id,
            "requestedAt": _iso(request.requested_at),
            "startedAt": _iso(request.started_at),
            "finishedAt": _iso(request.finished_at),
            "result": request.result,
        }

    def connections(self, patient_id: str, audit: AuditTrail | None = None) -> dict[str, Any]:
        with self.warehouse.connect("api: list connections") as conn:
            rows = wh.list_connections(conn, patient_id)
            _audit(audit, conn)
        return {
            "connections": [
                {
                    "source": SOURCE,
                    "status": row.status,
                    "scopes": list(row.scopes or []),
                    "connectedAt": _iso(row.connected_at),
                    "lastSyncedAt": _iso(row.last_synced_at),
                    "lastError": row.last_error,
                }
                for row in rows
            ]
        }

    def disconnect(self, patient_id: str, audit: AuditTrail | None = None) -> dict[str, Any]:
        with self.warehouse.connect("api: read connection to disconnect") as conn:
            connection = wh.get_connection(conn, patient_id)
        if connection is None or connection.status == "disconnected":
            raise not_connected("no Oura connection to disconnect")
        revoked = self._revoke_stored(patient_id, connection.access_token_enc)
        for attempt in self.warehouse.attempts("api: disconnect oura"):
            with attempt as conn:
                # Whatever is stored now is what gets deleted; a refresh (or a reconnect) may have replaced
                # the pair while Oura answered the revoke, and those tokens must not outlive the disconnect
                # at Oura.
                current = wh.get_connection(conn, patient_id)
                replaced = current is not None and current.access_token_enc != connection.access_token_enc
                wh.delete_tokens(conn, patient_id)  # also sets the status to `disconnected`
                wh.record_event(
                    conn,
                    patient_id=patient_id,
                    event_type="wearable_disconnected",
                    event_id=f"wearable_disconnected:{patient_id}:{uuid.uuid4().hex}",
                    payload={"source": SOURCE, "revoked": revoked, "replacedDuringDisconnect": replaced},
                )
                _audit(audit, conn)
        if replaced and current is not None:
            again = self._revoke_stored(patient_id, current.access_token_enc)
            log.info(
                "patient %s's tokens were replaced during the disconnect; revoked those too: %s",
                patient_id,
                again,
            )
            revoked = revoked and again
        log.info("patient %s disconnected Oura (revoked at Oura: %s)", patient_id, revoked)
        return {"source": SOURCE, "status": "disconnected", "revoked": revoked}

    def erase(self, patient_id: str, audit: AuditTrail | None = None) -> dict[str, Any]:
        """Revoke at Oura and remove every row of the patient (erasure.py); nothing left to erase is success.

        The file is compacted later, by the daily housekeeping job: rewriting it here would hold the warehouse
        for as long as copying it takes, with Dagster runs waiting.
        """
        eraser = PatientEraser(
            warehouse=self.warehouse,
            oauth=self.oauth,
            cipher=self.cipher,
            lock_dir=self.settings.lock_dir,
            journal_dir=self.settings.token_journal_dir,
            now=self.now,
            analytics_path=self.settings.analytics_path,
            analytics_key=self.settings.warehouse_key,
            coordination=coordination.from_settings(self.settings),
        )
        entry = (audit or AuditTrail("erase", uuid.uuid4().hex, None)).entry("ok", 200)
        outcome = eraser.erase(patient_id, dataclasses.replace(entry, actor=patient_id))
        if audit is not None:
            audit.recorded = True
        return {
            "source": SOURCE,
            "status": "erased",
            "revoked": outcome.revoked,
            "rowsRemoved": outcome.total_rows,
        }

    def _revoke_stored(self, patient_id: str, access_token_enc: str | None) -> bool:
        if not access_token_enc:
            return False
        try:
            access_token = self.cipher.decrypt(access_token_enc)
        except Exception as exc:
            log.warning("cannot decrypt patient %s's access token (%s)", patient_id, type(exc).__name__)
            return False
        return self._revoke_quietly(patient_id, access_token)
