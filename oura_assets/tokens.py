"""Oura tokens at rest, and the one place that spends a patient's refresh token.

Oura's refresh tokens are single use: the answer to a refresh carries a new refresh token, and losing it (or
spending the old one twice) locks the patient out until they reconnect (OURA-NOTES "OAuth"; parallel refreshes
race, watt-mind/coach #385). So a refresh happens under a per-patient cross-process lock, re-reads the
stored pair first (another process may already have rotated it), and stores the new pair encrypted before the
new access token is used. The pair Oura returns goes to the encrypted token journal (`token_journal`) first,
before the warehouse write that may wait for the writer lock: a process killed in that wait leaves the pair
journaled, and the next load applies it instead of offering the spent refresh token. Lock and journal are the
host's files, or PostgreSQL's when processes on several hosts share patients (coordination.py).
`invalid_grant` flags the connection once and every later call in this process fails fast instead of asking
Oura again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import tenacity
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from oura_assets import domain
from oura_assets import warehouse as wh
from oura_assets.clock import as_utc
from oura_assets.coordination import Coordination, FileCoordination, Lock
from oura_assets.oura.client import OuraError, OuraUnauthorized
from oura_assets.oura.oauth import RefreshRejected, TokenSet
from oura_assets.token_journal import JournalUnreadable, TokenJournal, pair_fields, pair_from

log = logging.getLogger(__name__)

# Refresh ahead of expiry so a page request never goes out with a token about to die mid-sync.
REFRESH_LEEWAY = timedelta(minutes=5)
RECONNECT_EVENT = domain.WEARABLE_RECONNECT_REQUIRED

# Fingerprints (SHA-256) of refresh tokens Oura refused in this process: asking again would only repeat the
# refusal, so later calls fail at once ("no retry storm", CONTRACT §6).
_REFUSED_REFRESH_TOKENS: set[str] = set()


class ReconnectRequired(OuraUnauthorized):
    """The patient must connect Oura again: the refresh token was refused, or no usable connection exists."""


class TokenStoreError(OuraError):
    """The stored tokens could not be read, decrypted or written, or the refresh lock was not obtained."""


class TokenDecryptError(ValueError):
    """A stored token cannot be decrypted with any configured key."""


class RefreshingOAuthApp(Protocol):
    """What PatientTokens needs from `oura_assets.oura.oauth.OuraOAuthApp`."""

    def refresh(self, refresh_token: str, *, fallback_scopes: Sequence[str] | None = None) -> TokenSet: ...


def _fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _is_worth_another_write(exc: BaseException) -> bool:
    # A removed connection or undecryptable stored tokens will not change by writing again.
    return not isinstance(exc, ReconnectRequired | TokenStoreError)


class TokenCipher:
    """Fernet encryption of tokens at rest with key rotation (MultiFernet; newest key first).

    Decrypting tries every key; encrypting and `rotate` use the newest, so a rotation is: put the new key
    first in OURA_ASSETS_TOKEN_KEY, `rotate` what is stored, then drop the old key.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("TokenCipher needs at least one Fernet key (OURA_ASSETS_TOKEN_KEY)")
        self._fernet = MultiFernet([Fernet(k.encode() if isinstance(k, str) else k) for k in keys])

    def __repr__(self) -> str:
        return "TokenCipher(keys=[redacted])"

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, ciphertext: str | bytes) -> str:
        data = ciphertext.encode("ascii") if isinstance(ciphertext, str) else bytes(ciphertext)
        try:
            return self._fernet.decrypt(data).decode()
        except InvalidToken:
            raise TokenDecryptError(
                "a stored token cannot be decrypted with any key in OURA_ASSETS_TOKEN_KEY"
            ) from None

    def rotate(self, ciphertext: str | bytes) -> str:
        """Re-encrypt under the newest key."""
        data = ciphertext.encode("ascii") if isinstance(ciphertext, str) else bytes(ciphertext)
        try:
            return self._fernet.rotate(data).decode("ascii")
        except InvalidToken:
            raise TokenDecryptError(
                "a stored token cannot be decrypted with any key in OURA_ASSETS_TOKEN_KEY"
            ) from None


def store_granted_tokens(
    conn: Any,
    patient_id: str,
    tokens: TokenSet,
    cipher: TokenCipher,
    *,
    oura_user_id: str | None,
    connected_at: datetime,
) -> None:
    """Store a pair Oura just granted (connect or reconnect), encrypted, and make the connection active."""
    wh.upsert_connection(
        conn,
        patient_id,
        oura_user_id=oura_user_id,
        scopes=list(tokens.scopes),
        access_token_enc=cipher.encrypt(tokens.access_token),
        refresh_token_enc=cipher.encrypt(tokens.refresh_token),
        expires_at=tokens.expires_at,
        connected_at=connected_at,
    )


class PatientTokens:
    """One patient's access tokens for `OuraClient` (implements `AccessTokenSource`).

    Holds the current pair in memory; goes to the warehouse (under the patient's lock) only on first use, when
    the access token expires within `REFRESH_LEEWAY`, or when Oura answered 401. Locks are taken patient lock
    first, warehouse lock second: never call `get` / `force_refresh` inside a warehouse connection block.
    `coordination` is where the lock and the journal live (`coordination.from_settings`); without it, files
    under `lock_dir` and `journal_dir`.
    """

    def __init__(
        self,
        patient_id: str,
        warehouse: wh.WarehouseAccess,
        cipher: TokenCipher,
        oauth_app: RefreshingOAuthApp,
        lock_dir: Path | str,
        *,
        lock_timeout_s: float = 120.0,
        persist_attempts: int = 3,
        persist_backoff_s: float = 0.5,
        refresh_leeway: timedelta = REFRESH_LEEWAY,
        journal_dir: Path | str | None = None,
        coordination: Coordination | None = None,
    ) -> None:
        self.patient_id = patient_id
        self._warehouse = warehouse
        self._cipher = cipher
        self._oauth = oauth_app
        self._lock_timeout_s = lock_timeout_s
        self._persist_attempts = max(1, persist_attempts)
        self._persist_backoff_s = persist_backoff_s
        self._leeway = refresh_leeway
        # Lock and journal are named by a hash: patient ids are personal identifiers and have no place in
        # file names, lock keys or table rows. The journal files live beside the lock dir by default
        # (`Settings.token_journal_dir`).
        self._coordination = coordination or FileCoordination(
            lock_dir, journal_dir or journal_dir_beside(lock_dir)
        )
        digest = _fingerprint(patient_id)[:32]
        self._lock_name = f"oura-tokens-{digest}"
        self._journal = TokenJournal(self._coordination.journal_store(), cipher)
        self.journal_name = f"refresh-{digest}"
        self.journal_path = self._journal.path(self.journal_name)  # the file store's entry; None for a table
        self._cached: TokenSet | None = None
        self._reconnect_required: str | None = None

    def __repr__(self) -> str:
        return f"PatientTokens(patient_id={self.patient_id!r})"

    def refresh_lock(self) -> Lock:
        """The patient's refresh lock; erasure holds it too, so no refresh lands mid-erasure."""
        return self._coordination.refresh_lock(self._lock_name)

    def get(self) -> str:
        """A valid access token, refreshing first if it expires within the leeway."""
        self._fail_fast()
        cached = self._cached
        if cached is not None and not cached.expires_within(self._leeway):
            return cached.access_token
        return self._obtain(stale=cached.access_token if cached is not None else None)

    def force_refresh(self, rejected: str) -> str:
        """Oura answered 401 to `rejected`: a newer token, refreshing only if nobody else already did."""
        self._fail_fast()
        return self._obtain(stale=rejected)

    def _fail_fast(self) -> None:
        if self._reconnect_required is not None:
            raise ReconnectRequired(self._reconnect_required)

    def _obtain(self, stale: str | None) -> str:
        lock = self.refresh_lock()
        try:
            got = lock.acquire(self._lock_timeout_s)
        except OSError as exc:  # the lock's store: a directory, or the coordination database
            raise TokenStoreError(f"could not take the token refresh lock ({exc})") from None
        if not got:
            raise TokenStoreError(
                f"timed out after {self._lock_timeout_s:g} s waiting for another process refreshing this "
                "patient's Oura token"
            )
        try:
            pair = self._load()
            if pair.access_token != stale and not pair.expires_within(self._leeway):
                # Someone (another process, or the first load) already holds a good token: the refresh
                # token stays unspent.
                self._cached = pair
                return pair.access_token
            return self._refresh(pair)
        finally:
            lock.release()

    def _load(self) -> TokenSet:
        """The current pair: the stored one, or the journal's when it supersedes the stored one (it is then
        written to the warehouse first, and the journal entry removed)."""
        try:
            with self._warehouse.transaction("tokens: read connection") as conn:
                record = wh.get_connection(conn, self.patient_id)
        except Exception as exc:
            raise TokenStoreError(f"could not read the Oura connection ({type(exc).__name__})") from exc
        if record is None:
            raise ReconnectRequired("no Oura connection is stored for this patient")
        if record.status != domain.ACTIVE:
            raise ReconnectRequired(f"the Oura connection is {record.status}; the patient must reconnect")
        stored = self._decrypt_record(record)
        journaled = self._read_journal()
        if journaled is None:
            return stored
        pair, replaces = journaled
        if _fingerprint(pair.refresh_token) == _fingerprint(stored.refresh_token):
            # Killed after the warehouse took the pair, before the entry was removed.
            self._journal.remove(self.journal_name)
            return stored
        if replaces != _fingerprint(stored.refresh_token):
            # The warehouse moved on since the journal was written (e.g. the patient reconnected).
            log.info("discarding a stale Oura token journal for patient %s", self.patient_id)
            self._journal.remove(self.journal_name)
            return stored
        log.warning("applying the Oura token journal for patient %s", self.patient_id)
        try:
            current = self._save(pair, replaces)
        except ReconnectRequired:
            self._journal.remove(self.journal_name)
            raise
        except Exception as exc:
            log.warning(
                "the warehouse still refuses journaled Oura tokens for patient %s (%s); using the journal",
                self.patient_id,
                type(exc).__name__,
            )
            return pair
        return current

    def _refresh(self, pair: TokenSet) -> str:
        spent = _fingerprint(pair.refresh_token)
        if spent in _REFUSED_REFRESH_TOKENS:
            raise ReconnectRequired(self._flag_reconnect(spent))
        try:
            new = self._oauth.refresh(pair.refresh_token, fallback_scopes=pair.scopes)
        except RefreshRejected:
            _REFUSED_REFRESH_TOKENS.add(spent)
            raise ReconnectRequired(self._flag_reconnect(spent)) from None
        # From here Oura has rotated the pair: the old refresh token is dead and the new one exists only in
        # this process until it is stored. The journal first (a file fsynced, or a row committed: no lock to
        # wait for), then the warehouse, whose lock may be held for minutes by a run or a notebook.
        try:
            self._write_journal(new, spent)
        except TokenStoreError:
            log.error(
                "could not journal refreshed Oura tokens for patient %s; storing them directly",
                self.patient_id,
            )
        try:
            current = self._persist(new, spent)
        except ReconnectRequired:
            self._journal.remove(self.journal_name)
            raise
        self._cached = current
        log.info("refreshed the Oura access token for patient %s", self.patient_id)
        return current.access_token

    def _flag_reconnect(self, spent: str) -> str:
        """Mark the connection `reconnect_required` (here and in the warehouse); returns the message."""
        message = "Oura refused the refresh token (invalid_grant); the patient must reconnect Oura"
        self._reconnect_required = message
        self._cached = None
        try:
            for attempt in self._warehouse.attempts("tokens: reconnect required"):
                with attempt as conn:
                    wh.set_connection_status(
                        conn, self.patient_id, domain.RECONNECT_REQUIRED, last_error=message
                    )
                    wh.record_event(
                        conn,
                        patient_id=self.patient_id,
                        event_type=RECONNECT_EVENT,
                        payload={"source": domain.SOURCE, "reason": "refresh_rejected", "message": message},
                        # One event per refused token, however many processes hit the refusal.
                        event_id=f"{RECONNECT_EVENT}:{self.patient_id}:{spent[:16]}",
                    )
        except Exception as exc:
            log.error(
                "could not mark patient %s's Oura connection reconnect_required (%s)",
                self.patient_id,
                type(exc).__name__,
            )
        return message

    def _decrypt_record(self, record: wh.ConnectionRecord) -> TokenSet:
        if not record.access_token_enc or not record.refresh_token_enc or record.expires_at is None:
            raise ReconnectRequired("the Oura connection has no stored tokens; the patient must reconnect")
        try:
            return TokenSet(
                access_token=self._cipher.decrypt(record.access_token_enc),
                refresh_token=self._cipher.decrypt(record.refresh_token_enc),
                expires_at=as_utc(record.expires_at),
                scopes=record.scopes,  # the warehouse reads the VARCHAR[] as a tuple
            )
        except TokenDecryptError as exc:
            raise TokenStoreError(str(exc)) from None

    def _save(self, pair: TokenSet, replaces: str) -> TokenSet:
        """Store `pair` over the pair it replaces and return the pair now current.

        Compare-and-swap inside one transaction: if the stored pair is no longer the one `pair` replaces, the
        patient reconnected meanwhile and their new connection wins; if they disconnected, the refresh must
        not bring the connection back (`ReconnectRequired`).
        """
        for attempt in self._warehouse.attempts("tokens: store refreshed pair"):
            with attempt as conn:
                current = self._swap(conn, pair, replaces)
        # Committed: the warehouse holds the current pair, the journal entry has done its job.
        self._journal.remove(self.journal_name)
        return current

    def _swap(self, conn: Any, pair: TokenSet, replaces: str) -> TokenSet:
        record = wh.get_connection(conn, self.patient_id)
        if record is None or record.status == domain.DISCONNECTED:
            raise ReconnectRequired("the Oura connection was removed during a token refresh")
        if record.refresh_token_enc:
            current = self._decrypt_record(record)
            if _fingerprint(current.refresh_token) not in (replaces, _fingerprint(pair.refresh_token)):
                log.info(
                    "patient %s reconnected during a refresh; keeping the new connection", self.patient_id
                )
                return current
        stored = wh.save_tokens(
            conn,
            self.patient_id,
            access_token_enc=self._cipher.encrypt(pair.access_token),
            refresh_token_enc=self._cipher.encrypt(pair.refresh_token),
            expires_at=pair.expires_at,
            scopes=list(pair.scopes),
        )
        if not stored:
            raise ReconnectRequired("the Oura connection was removed during a token refresh")
        return pair

    def _persist(self, pair: TokenSet, replaces: str) -> TokenSet:
        """`_save` with retries; as a last resort the encrypted journal, so the rotated pair is never lost."""
        try:
            # Backoff b * 2**n plus up to b of jitter, capped at 8 b (b = persist_backoff_s).
            for attempt in tenacity.Retrying(
                retry=tenacity.retry_if_exception(_is_worth_another_write),
                stop=tenacity.stop_after_attempt(self._persist_attempts),
                wait=tenacity.wait_exponential_jitter(
                    multiplier=self._persist_backoff_s,
                    max=self._persist_backoff_s * 8,
                    jitter=self._persist_backoff_s,
                ),
                before_sleep=self._log_persist_retry,
                reraise=True,
            ):
                with attempt:
                    return self._save(pair, replaces)
        except ReconnectRequired:
            raise
        except Exception as exc:
            log.error(
                "could not store refreshed Oura tokens for patient %s (%s); writing the encrypted journal",
                self.patient_id,
                type(exc).__name__,
            )
        self._write_journal(pair, replaces)
        return pair

    def _log_persist_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "storing refreshed Oura tokens for patient %s failed (%s); retrying in %.2f s",
            self.patient_id,
            type(exc).__name__,
            state.upcoming_sleep,
        )

    def _write_journal(self, pair: TokenSet, replaces: str) -> None:
        """The rotated pair, durable (Fernet-encrypted; a 0600 file fsynced, or a committed row)."""
        try:
            self._journal.write(self.journal_name, {**pair_fields(pair), "replaces": replaces})
        except OSError as exc:
            raise TokenStoreError(
                f"could not store refreshed Oura tokens anywhere ({type(exc).__name__}); "
                "the patient may have to reconnect"
            ) from None

    def _read_journal(self) -> tuple[TokenSet, str] | None:
        try:
            data = self._journal.read(self.journal_name)
            if data is None:
                return None
            return pair_from(data), str(data["replaces"])
        except OSError as exc:
            # An entry may be there: going on without it could offer Oura a spent refresh token.
            raise TokenStoreError(f"could not read the Oura token journal ({type(exc).__name__})") from None
        except (JournalUnreadable, ValueError, KeyError, TypeError) as exc:
            log.error(
                "ignoring an unreadable Oura token journal for patient %s (%s)",
                self.patient_id,
                type(exc).__name__,
            )
            return None


def journal_dir_beside(lock_dir: Path | str) -> Path:
    """The token journal: a private directory beside the lock dir (`Settings.token_journal_dir`)."""
    return Path(lock_dir).parent / "token-journal"
