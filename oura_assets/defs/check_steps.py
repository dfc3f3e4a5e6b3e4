"""One Dagster step per checked asset: the asset checks are plain functions of the warehouse, each with its
`dg.AssetCheckSpec`, and `CheckSet.steps()` runs all of an asset's checks in one `dg.multi_asset_check`.

Why not one `@dg.asset_check` each: every check step costs Dagster's main thread 60-90 ms of its own work.
Turning a check's result into its evaluation lists every partition of the daily-partitioned asset it targets
(~1,070 keys by cron iteration, ~20 ms) and reads the asset's record, once per step (Dagster caches that per
asset within a step only; py-spy --gil put ~1.0 s per run there), and each step adds its start, success and
resource events on top. Measured on a 3-patient 7-day `oura_sync` run (main-thread CPU, median of 3, runs
interleaved): 36 steps and 4.1-4.5 s with 30 check steps, 21 steps and 3.0-3.2 s with 15. The nightly run and
each of the test suite's ~80 runs pay it.

Why per asset and not one step for all: a step fails after yielding all its results if a blocking check
failed, and whatever depends on the step waits for it. Grouped by asset, a failed blocking check on
`oura_raw/sleep` still stops only what is built from `oura_raw/sleep`, exactly as with one step per check.

Each check keeps its key, description, severity, `blocking` and result; `can_subset=True` keeps a single check
runnable on its own (the UI, `dagster asset check`), and the functions stay callable without Dagster (tests).
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dagster as dg

from oura_assets.defs.resources import WarehouseResource

CheckFn = Callable[[WarehouseResource], dg.AssetCheckResult]


@dataclass(frozen=True)
class Check:
    spec: dg.AssetCheckSpec
    evaluate: CheckFn


class CheckSet:
    """The checks of a module, in the order they are defined; `steps()` turns them into Dagster steps."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, spec: dg.AssetCheckSpec, evaluate: CheckFn) -> CheckFn:
        if any(c.spec.key == spec.key for c in self.checks):
            raise ValueError(f"two checks named {spec.key.to_user_string()}")
        self.checks.append(Check(spec, evaluate))
        return evaluate

    def check(
        self, asset: dg.AssetKey, *, description: str, name: str | None = None, blocking: bool = False
    ) -> Callable[[CheckFn], CheckFn]:
        """Register the decorated function as the check `name` (its own name by default) on `asset`; the
        function itself is returned unchanged."""

        def register(evaluate: CheckFn) -> CheckFn:
            spec = dg.AssetCheckSpec(
                name or evaluate.__name__, asset=asset, description=description, blocking=blocking
            )
            return self.add(spec, evaluate)

        return register

    def spec_of(self, evaluate: CheckFn) -> dg.AssetCheckSpec:
        return next(c.spec for c in self.checks if c.evaluate is evaluate)

    def steps(self) -> list[dg.AssetChecksDefinition]:
        by_asset: dict[dg.AssetKey, list[Check]] = {}
        for c in self.checks:
            by_asset.setdefault(c.spec.asset_key, []).append(c)
        return [_step(asset, checks) for asset, checks in by_asset.items()]


def _step(asset: dg.AssetKey, checks: list[Check]) -> dg.AssetChecksDefinition:
    # Named `<asset>_checks`: step keys stay readable in the UI (`oura_raw__sleep_checks`).
    @dg.multi_asset_check(
        specs=[c.spec for c in checks],
        name=f"{asset.to_python_identifier()}_checks",
        description=f"The checks of {asset.to_user_string()}, in one step.",
        can_subset=True,
    )
    def _evaluate(
        context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> Iterator[dg.AssetCheckResult]:
        # A check that raises must not hide the others: with one step per check, the others were still
        # evaluated. So every selected check runs, every answer is yielded, and only then the step fails with
        # the first error, its traceback intact, and each raising check named in the log. The step failing is
        # what a raising check did before: the run fails, and for a raw asset (all its checks block) what
        # depends on the asset is not built. Nothing broader is caught: `except Exception` lets a run's
        # termination (a BaseException) stop the step at once.
        #
        # The checks run in one hold of the warehouse: each check's own `connect` nests in it (the lock and
        # the attached file are re-entrant within a thread), so the file is attached and detached once per
        # step, not once per check (6-8 ms each on the test suite's small files; a 2-patient test run went
        # from 59 attaches to 45). The checks are short reads; a writer waiting meanwhile waits for them all.
        # The answers are yielded once the hold is let go, so Dagster's recording of them never holds it.
        errors: list[Exception] = []
        results: list[tuple[Check, dg.AssetCheckResult]] = []
        with warehouse.connect(f"checks of {asset.to_user_string()}"):
            for c in checks:
                if c.spec.key not in context.selected_asset_check_keys:
                    continue
                try:
                    results.append((c, c.evaluate(warehouse)))
                except Exception as error:
                    context.log.error(
                        f"check {c.spec.key.to_user_string()} raised {type(error).__name__}: {error}"
                    )
                    errors.append(error)
        for c, result in results:
            # The check's own result, only told which check it answers: every field it set is kept.
            yield result._replace(asset_key=c.spec.asset_key, check_name=c.spec.name)
        if errors:
            raise errors[0]

    return _evaluate
