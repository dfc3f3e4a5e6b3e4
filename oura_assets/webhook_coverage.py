"""The nightly pull as the webhooks' auditor: what it found that no webhook announced, and what to do then.

Oura recommends webhooks for ongoing updates with a periodic pull to reconcile what a webhook missed, and
webhooks do go silent in practice: integrators report days without a single event while the subscriptions
looked active (OURA-NOTES.md). So a run over every patient (the nightly schedule, a backfill) counts, per data
type, the documents it found new or changed that no webhook event ever announced (`unannounced`), beside what
it changed at all (`changed`). The raw asset puts both in the run's metadata; the `webhooks_announced_changes`
check (`defs/webhooks.py`) warns on the same counts over two days.

When the pull found changes and not one event arrived in the last `QUIET_WINDOW` while webhooks are
configured, the subscriptions have gone quiet: ours (those naming our callback) are deleted and created again
(`oura.webhooks.recreate_subscriptions`), which makes Oura verify the callback afresh. A failure there is
reported, never raised: the pull has already synced everyone. No Dagster here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from oura_assets import warehouse as wh
from oura_assets.config import ConfigError, Settings
from oura_assets.oura.webhooks import WebhookApiError, recreate_from_settings

log = logging.getLogger(__name__)

QUIET_WINDOW = timedelta(hours=24)


@dataclass
class CoverageReport:
    changed: dict[str, int]
    unannounced: dict[str, int]
    events_recent: int
    configured: bool
    quiet: bool = False
    recreated: list[str] = field(default_factory=list)
    error: str | None = None

    def metadata(self) -> dict[str, Any]:
        return {
            "webhooks_configured": self.configured,
            "webhook_changed_documents": self.changed,
            "webhook_unannounced_documents": self.unannounced,
            "webhook_events_last_24h": self.events_recent,
            "webhooks_quiet": self.quiet,
            "webhook_subscriptions_recreated": len(self.recreated),
            **({"webhook_recreate_error": self.error} if self.error else {}),
        }


def review_coverage(
    warehouse: wh.WarehouseAccess, settings: Settings, run_started_at: datetime, now: datetime
) -> CoverageReport:
    """Count what this run changed that no webhook announced; re-create the subscriptions gone quiet."""
    with warehouse.connect("webhook coverage of a pull") as conn:
        found = wh.unannounced_documents(conn, run_started_at)
        recent = wh.unannounced_documents(conn, now - QUIET_WINDOW).events
    configured = bool(settings.webhook_verification_token)
    report = CoverageReport(found.changed, found.unannounced, recent, configured)
    report.quiet = configured and recent == 0 and sum(found.unannounced.values()) > 0
    if report.quiet:
        try:
            report.recreated = recreate_from_settings(settings).created
            log.warning(
                "webhooks went quiet (no event in %s while the pull found %d unannounced documents): "
                "re-created %d subscriptions",
                QUIET_WINDOW,
                sum(found.unannounced.values()),
                len(report.recreated),
            )
        except (WebhookApiError, ConfigError) as exc:
            report.error = str(exc)
            log.error("webhooks went quiet and could not be re-created: %s", exc)
    return report
