"""What a sync comes to: a patient's result, a run's outcome, and the rule that says if the run failed.

Apart from `sync.py` (which fetches and lands) because the Dagster assets, the rebuild and the tests read
these without needing the fetch machinery: a `RunOutcome` is plain data plus the failure rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from oura_assets.sync_errors import OURA_UNAVAILABLE_CODES, PATIENT_SIDE_CODES, SyncError


@dataclass
class PatientSyncResult:
    patient_id: str
    status: str  # success | partial | failed
    rows: dict[str, int] = field(default_factory=dict)
    errors: list[SyncError] = field(default_factory=list)
    documents: dict[str, int] = field(default_factory=dict)
    """Documents fetched, by what they were to the warehouse: new, changed, unchanged, deleted."""
    collections: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Each collection asked for: (status, reason), `domain.COLLECTION_STATUSES`; empty when nothing could be
    asked (reconnect required)."""

    @property
    def patient_side(self) -> bool:
        """True when every error is the patient's to fix (reconnect, membership, consent)."""
        return bool(self.errors) and all(e.code in PATIENT_SIDE_CODES for e in self.errors)


class RunLog(Protocol):
    """Where a run's progress goes: a `logging.Logger`, or Dagster's `context.log` in an asset."""

    def info(self, msg: str) -> Any: ...

    def warning(self, msg: str) -> Any: ...

    def error(self, msg: str) -> Any: ...


@dataclass(frozen=True)
class RunOutcome:
    """Every patient's result in a run, in the order they finished, and what they add up to."""

    results: list[PatientSyncResult]

    @property
    def patients(self) -> int:
        return len(self.results)

    @property
    def patients_failed(self) -> int:
        return sum(r.status == "failed" for r in self.results)

    @property
    def patients_ok(self) -> int:
        """Patients with data landed: `success` and `partial` alike."""
        return self.patients - self.patients_failed

    @property
    def patients_partial(self) -> int:
        return sum(r.status == "partial" for r in self.results)

    @property
    def failed_patients(self) -> dict[str, list[str]]:
        """Error codes of every patient that did not fully succeed, by patient id."""
        return {r.patient_id: [e.code for e in r.errors] for r in self.results if r.status != "success"}

    @property
    def failed_for_us(self) -> list[PatientSyncResult]:
        """Patients who got nothing, for a reason that is not theirs: Oura down, the warehouse, our bug."""
        return [r for r in self.results if r.status == "failed" and not r.patient_side]

    @property
    def lost_to_oura(self) -> list[PatientSyncResult]:
        """Patients who landed some collections but lost at least one to Oura being unavailable (after every
        retry and refetch pass)."""
        return [
            r
            for r in self.results
            if r.status == "partial" and any(e.code in OURA_UNAVAILABLE_CODES for e in r.errors)
        ]

    def rows(self, tables: Iterable[str]) -> dict[str, int]:
        """Rows written to each of `tables`, over all patients, by table name."""
        return {t: sum(r.rows.get(t, 0) for r in self.results) for t in sorted(tables)}

    @property
    def failure(self) -> str | None:
        """Why the run must fail, or None.

        The rule: leave out the patients who failed for a patient-side reason (reconnect, membership: Oura
        could not have served them, so they say nothing about Oura). If at least one patient remains and
        every one of them either failed for us (`failed_for_us`) or is partial because Oura was unavailable
        for some collection (`lost_to_oura`), the run fails: Oura (or we) served nobody fully, which is ours
        to see, not a green run. Otherwise the run succeeds, and a partial outage shows in the run's
        `patients_partial` tag and the raw assets' `oura_available` check instead. Patient-side failures
        never fail a run.
        """
        served = [r for r in self.results if not (r.status == "failed" and r.patient_side)]
        failed, partial = self.failed_for_us, self.lost_to_oura
        if not served or len(failed) + len(partial) < len(served):
            return None
        first = (failed or partial)[0]
        first_error = next((e for e in first.errors if e.code in OURA_UNAVAILABLE_CODES), first.errors[0])
        if not partial:
            others = len(self.results) - len(served)
            aside = f" (and {others} patient-side)" if others else ""
            return f"all {len(failed)} patient(s) failed{aside}; first: {first_error}"
        return (
            f"Oura was unavailable for all {len(served)} patient(s) it could serve: {len(failed)} failed, "
            f"{len(partial)} partial; first: {first.patient_id}: {first_error.code} on "
            f"{first_error.collection}: {first_error.message}"
        )
