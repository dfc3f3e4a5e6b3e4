"""Keeping Oura's webhook subscriptions alive: a daily job that creates missing ones and renews expiring ones.

Subscriptions expire (`expiration_time`) unless renewed, and a lapsed one goes silent without an error
anywhere, so a schedule renews them every day, well before they lapse (`RENEW_WITHIN`). Where webhooks are
not configured (no `OURA_WEBHOOK_VERIFICATION_TOKEN`, no OAuth client) the job says so and succeeds: the
nightly pull still syncs everyone.

Webhooks also go silent in practice (integrators report days without an event while the subscriptions
looked active): the asset check `webhooks_announced_changes` counts, per data type, the documents a sync
found new or changed in the last two days that no webhook announced, as a warning.
"""

from datetime import timedelta

import dagster as dg

from oura_assets import warehouse as wh
from oura_assets.clock import utc_now
from oura_assets.config import ConfigError, load_settings
from oura_assets.defs.assets import WEARABLE_DATA_KEY
from oura_assets.defs.resources import WarehouseResource
from oura_assets.oura.webhooks import DEFAULT_RENEW_WITHIN, ensure_from_settings

WEBHOOK_JOB_NAME = "oura_webhook_subscriptions"


class WebhookRenewalConfig(dg.Config):
    renew_within_days: int = DEFAULT_RENEW_WITHIN.days
    """Renew subscriptions that expire within this many days."""


@dg.op(description="Create the Oura webhook subscriptions we need and renew those close to expiry.")
def ensure_webhook_subscriptions(
    context: dg.OpExecutionContext, config: WebhookRenewalConfig
) -> dg.Output[dict]:
    try:
        settings = load_settings(require=("oauth",))
        report = ensure_from_settings(settings, renew_within=timedelta(days=config.renew_within_days))
    except ConfigError as exc:
        context.log.warning(f"webhooks not configured, nothing to renew: {exc}")
        return dg.Output({}, metadata={"configured": False, "reason": str(exc)})
    context.log.info(
        f"webhook subscriptions: {len(report.created)} created, {len(report.renewed)} renewed, "
        f"{len(report.kept)} kept"
    )
    expiries = [s.expiration_time for s in report.subscriptions]
    return dg.Output(
        report.as_dict(),
        metadata={
            "configured": True,
            "created": dg.MetadataValue.json(report.created),
            "renewed": dg.MetadataValue.json(report.renewed),
            "kept": len(report.kept),
            "earliest_expiration": min(expiries).isoformat() if expiries else "none",
        },
    )


@dg.job(name=WEBHOOK_JOB_NAME, description="Ensure and renew the Oura webhook subscriptions.")
def webhook_subscriptions_job() -> None:
    ensure_webhook_subscriptions()


renew_webhook_subscriptions = dg.ScheduleDefinition(
    name="renew_webhook_subscriptions",
    cron_schedule="30 2 * * *",
    execution_timezone="UTC",
    job=webhook_subscriptions_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: create missing Oura webhook subscriptions and renew those expiring within 7 days.",
)


COVERAGE_WINDOW = timedelta(days=2)


# Run in `wearable_data`'s check step with the other checks of that asset (`checks.CHECK_STEPS`).
WEBHOOKS_ANNOUNCED_CHANGES = dg.AssetCheckSpec(
    "webhooks_announced_changes",
    asset=WEARABLE_DATA_KEY,
    description="Webhooks went silent: documents that appeared or changed in the last 2 days that no Oura "
    "webhook announced, per data type (the nightly pull fetched them anyway).",
)


def webhooks_announced_changes(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    settings = load_settings()
    if not settings.webhook_verification_token:
        return dg.AssetCheckResult(passed=True, metadata={"configured": False})
    with warehouse.connect("check: webhook coverage") as conn:
        coverage = wh.unannounced_documents(conn, utc_now() - COVERAGE_WINDOW)
    missed = sum(coverage.unannounced.values())
    metadata = {
        "configured": True,
        "webhook_events": coverage.events,
        "changed_documents": dg.MetadataValue.json(coverage.changed),
        "unannounced_documents": dg.MetadataValue.json(coverage.unannounced),
    }
    if coverage.events == 0:
        # No event at all in the window: either webhooks were never subscribed here (`oura-assets webhooks
        # ensure`) or they went silent; both leave the pull as the only source, which is worth a warning
        # only once data is actually changing.
        metadata["note"] = "no webhook event received in the window"
    return dg.AssetCheckResult(passed=missed == 0, severity=dg.AssetCheckSeverity.WARN, metadata=metadata)
