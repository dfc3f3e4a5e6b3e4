"""Erasing a patient on request (GDPR art. 17): revoke at Oura, then remove them from everything we keep.

One function for both doors, the API (`DELETE …/connections/oura?erase=true`, the patient) and the command
(`oura-assets patient erase ID`, an operator):

1. Under the patient's token lock (so no refresh stores a new pair half-way), every grant we hold for them
   is revoked at Oura: the stored pair, a journaled refresh not stored yet, grants of interrupted callbacks.
   A revoke that fails (Oura unreachable) does not stop the erasure; the outcome says so.
2. One warehouse transaction deletes every row of the patient from every table with a `patient_id`
   (`warehouse.erasure`), connection and tokens included, and appends the audit entry (counts only).
3. Then the token-journal entries of the patient are removed (files, or rows of the coordination database:
   neither joins the warehouse transaction; they only hold tokens already revoked in step 1), and the
   analytics snapshot is rewritten without them.

Erasing twice is harmless: the second finds nothing and says so. Deleted rows stay in DuckDB's freed blocks
until the file is rewritten (`warehouse.compact`): the command compacts at once, the API leaves it to the
daily housekeeping job (`defs/housekeeping.py`), which compacts when an erasure is pending.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from oura_assets import analytics
from oura_assets import warehouse as wh
from oura_assets.clock import utc_now
from oura_assets.coordination import Coordination, FileCoordination
from oura_assets.oura.oauth import OuraOAuthApp
from oura_assets.token_journal import GrantJournal, JournalUnreadable, TokenJournal, pair_from
from oura_assets.tokens import PatientTokens, TokenCipher

log = logging.getLogger(__name__)

ERASE = "erase"
# A refresh in flight finishes within seconds; an erasure waits that long for it, then goes ahead anyway.
TOKEN_LOCK_WAIT_S = 30.0


@dataclass(frozen=True)
class ErasureOutcome:
    patient_id: str
    rows_removed: dict[str, int]
    # None: we held no grant to revoke; True: Oura revoked every one; False: at least one revoke failed.
    revoked: bool | None
    journal_entries_removed: int = 0
    compaction: wh.Compaction | None = field(default=None)

    @property
    def total_rows(self) -> int:
        return sum(self.rows_removed.values())

    def detail(self) -> dict[str, Any]:
        """What the audit entry and the answers carry: counts and verdicts, never data."""
        return {
            "rowsRemoved": {table: n for table, n in self.rows_removed.items() if n},
            "totalRows": self.total_rows,
            "revokedAtOura": self.revoked,
            "journalEntriesRemoved": self.journal_entries_removed,
        }


@dataclass
class PatientEraser:
    warehouse: wh.Warehouse
    oauth: OuraOAuthApp
    cipher: TokenCipher
    lock_dir: Path
    journal_dir: Path
    now: Callable[[], datetime] = utc_now
    lock_wait_s: float | None = None
    # The analytics snapshot (`Settings.analytics_path`), rewritten without the patient after the erasure.
    analytics_path: Path | None = None
    # The key the snapshot is encrypted with (OURA_ASSETS_WAREHOUSE_KEY), None for a plain one.
    analytics_key: str | None = field(default=None, repr=False)
    # Where refresh locks and the journal live (`coordination.from_settings`); None: `lock_dir`/`journal_dir`.
    coordination: Coordination | None = None

    def erase(self, patient_id: str, audit: wh.AuditEntry, *, compact: bool = False) -> ErasureOutcome:
        """Erase `patient_id`; `audit` (action, actor, request id…) is appended in the erasing transaction."""
        coordination = self.coordination or FileCoordination(self.lock_dir, self.journal_dir)
        tokens = PatientTokens(
            patient_id=patient_id,
            warehouse=self.warehouse,
            cipher=self.cipher,
            oauth_app=self.oauth,
            lock_dir=self.lock_dir,
            coordination=coordination,
        )
        lock = tokens.refresh_lock()
        if not lock.acquire(TOKEN_LOCK_WAIT_S):
            log.warning("erasing patient %s while another process holds their token lock", patient_id)
            lock = None
        try:
            journal = TokenJournal(coordination.journal_store(), self.cipher)
            grants = self._grant_entries(journal, patient_id)
            access_tokens = self._stored_access_tokens(patient_id, journal, tokens.journal_name)
            access_tokens += [token for _, token in grants]
            revoked = self._revoke_all(patient_id, access_tokens)
            with self.warehouse.transaction("erase a patient", self.lock_wait_s) as conn:
                removed = wh.erase_patient_rows(conn, patient_id)
                outcome = ErasureOutcome(patient_id, removed, revoked)
                entries = [tokens.journal_name, *(name for name, _ in grants)]
                present = sum(journal.exists(name) for name in entries)
                outcome = dataclasses.replace(outcome, journal_entries_removed=present)
                wh.record_audit(
                    conn,
                    dataclasses.replace(audit, patient_id=patient_id, action=ERASE, detail=outcome.detail()),
                )
            for name in entries:
                journal.remove(name)
        finally:
            if lock is not None:
                lock.release()
        if self.analytics_path is not None:
            analytics.erase_from_snapshot(self.analytics_path, patient_id, key=self.analytics_key)
        if compact:
            outcome = dataclasses.replace(outcome, compaction=wh.compact(self.warehouse))
        log.info(
            "patient %s erased: %d rows removed, revoked at Oura: %s", patient_id, outcome.total_rows, revoked
        )
        return outcome

    def _stored_access_tokens(self, patient_id: str, journal: TokenJournal, refresh_entry: str) -> list[str]:
        """The access tokens of the stored pair and of a journaled refresh not stored yet."""
        found: list[str] = []
        with self.warehouse.connect("erase a patient: read their connection", self.lock_wait_s) as conn:
            connection = wh.get_connection(conn, patient_id)
        if connection is not None and connection.access_token_enc:
            try:
                found.append(self.cipher.decrypt(connection.access_token_enc))
            except Exception as exc:
                log.warning("cannot decrypt patient %s's access token (%s)", patient_id, type(exc).__name__)
        try:
            entry = journal.read(refresh_entry)
            if entry is not None:
                found.append(pair_from(entry).access_token)
        except (JournalUnreadable, KeyError, TypeError, ValueError) as exc:
            log.warning("cannot read patient %s's token journal (%s)", patient_id, type(exc).__name__)
        return found

    def _grant_entries(self, journal: TokenJournal, patient_id: str) -> list[tuple[str, str]]:
        """(entry name, access token) of journaled grants of `patient_id` whose callback is not at work."""
        grants = GrantJournal(journal)
        found = []
        for name in grants.names():
            with grants.held(name, wait=False) as mine:
                if not mine:
                    continue  # a callback at work: the patient is connecting again right now
                try:
                    entry = grants.read(name)
                except JournalUnreadable:
                    continue
                if entry is not None and entry.patient_id == patient_id:
                    found.append((name, entry.tokens.access_token))
        return found

    def _revoke_all(self, patient_id: str, access_tokens: list[str]) -> bool | None:
        if not access_tokens:
            return None
        ok = True
        for token in dict.fromkeys(access_tokens):
            try:
                self.oauth.revoke(token)
            except Exception as exc:
                log.warning("revoking patient %s's Oura grant failed (%s)", patient_id, type(exc).__name__)
                ok = False
        return ok
