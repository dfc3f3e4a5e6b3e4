"""Every answer the simulator gives, checked against Oura's OpenAPI schemas with jsonschema (2020-12).

Stricter than the spec on purpose: objects may carry only the spec's properties plus the extras listed in
KNOWN_DEVIATIONS, and dates and date-times must parse. The deviations are the ones real Oura is reported to
show and that clients must survive; anything else the simulator adds is a bug here.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

import oura_assets.simulator
from oura_assets.simulator import ClientRegistration, SimulatorConfig, SimulatorServer
from oura_assets.simulator import data as simdata

SPEC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "oura-openapi.json"
EXTRACT = Path(oura_assets.simulator.__file__).with_name("oura_openapi_schemas.json")
CLOCK = datetime(2024, 6, 20, 12, 0, tzinfo=UTC)

ROUTE_SCHEMAS = {
    "daily_readiness": "PublicDailyReadiness",
    "daily_sleep": "PublicDailySleep",
    "sleep": "PublicModifiedSleepModel",
    "daily_activity": "PublicDailyActivity",
    "workout": "PublicWorkout",
    "session": "PublicSession",
    "tag": "TagModel",
    "enhanced_tag": "EnhancedTagModel",
    "daily_spo2": "PublicDailySpO2",
    "daily_stress": "PublicDailyStress",
    "daily_resilience": "DailyResilienceModel",
    "daily_cardiovascular_age": "PublicDailyCardiovascularAge",
    "vO2_max": "PublicVO2Max",
    "sleep_time": "PublicSleepTime",
    "rest_mode_period": "PublicRestModePeriod",
    "ring_configuration": "PublicRingConfiguration",
}
# How far back each route is listed: far enough that every kind of document shows up, short enough to stay
# fast (jsonschema is slow on daily_activity's 1440 `met` items).
LONG_WINDOW = {
    "sleep",
    "workout",
    "session",
    "daily_stress",
    "rest_mode_period",
    "tag",
    "enhanced_tag",
    "vO2_max",
}
META = {
    "type": "object",
    "properties": {"updated_at": {"type": "string", "format": "date-time"}, "version": {"type": "integer"}},
    "required": ["updated_at", "version"],
    "additionalProperties": False,
}
# The only ways the simulator may differ from the spec, each reported of real Oura (OURA-NOTES.md):
KNOWN_DEVIATIONS: dict[str, dict[str, Any]] = {
    # An in-progress night has no end yet although the spec requires the field (Home Assistant notes).
    "PublicModifiedSleepModel.bedtime_end": {
        "anyOf": [{"$ref": "#/components/schemas/LocalizedDateTime"}, {"type": "null"}]
    },
    # Older exports' `meta {updated_at, version}` object on documents.
    **{f"{schema}.meta": META for schema in ROUTE_SCHEMAS.values()},
    # An unknown extra timestamp on some heart-rate rows.
    "PublicHeartRateRow.producer_timestamp": {"type": "string", "format": "date-time"},
    # FastAPI (pydantic 2) echoes the offending value in its 422 items; the 1.35 export predates that.
    "ValidationError.input": {},
}
PROBLEM = {
    "type": "object",
    "properties": {"status": {"type": "integer"}, "title": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["status", "title", "detail"],
    "additionalProperties": False,
}
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")


def _is_date(value: object) -> bool:
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return False
    date.fromisoformat(value)
    return True


def _is_datetime(value: object) -> bool:
    if not isinstance(value, str) or not _DATETIME.fullmatch(value):
        return False
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


FORMATS = jsonschema.FormatChecker(formats=())
FORMATS.checks("date", raises=ValueError)(_is_date)
FORMATS.checks("date-time", raises=ValueError)(_is_datetime)


def strict_components(schemas: dict[str, Any]) -> dict[str, Any]:
    """The spec's schemas with formats enforced, no unlisted extra properties, and the listed deviations."""
    out = copy.deepcopy(schemas)
    out["ISODate"] = {"type": "string", "format": "date"}
    out["LocalizedDateTime"] = {"type": "string", "format": "date-time"}
    out["UtcDateTime"] = {"type": "string", "format": "date-time"}
    for schema in out.values():
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
    for where, replacement in KNOWN_DEVIATIONS.items():
        name, field = where.split(".")
        out[name]["properties"][field] = replacement
    return out


def load_schemas() -> dict[str, Any]:
    return json.loads(EXTRACT.read_text())["components"]["schemas"]


class Checker:
    """Validates instances against the strict schemas; validators are built once per schema."""

    def __init__(self) -> None:
        self.components = strict_components(load_schemas())
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}

    def _validator(
        self, schema_name: str | None, schema: dict[str, Any] | None
    ) -> jsonschema.Draft202012Validator:
        key = schema_name or json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            root: dict[str, Any] = {"components": {"schemas": self.components}}
            root.update({"$ref": f"#/components/schemas/{schema_name}"} if schema_name else schema or {})
            self._validators[key] = jsonschema.Draft202012Validator(root, format_checker=FORMATS)
        return self._validators[key]

    def validate(
        self, instance: Any, schema_name: str | None = None, schema: dict[str, Any] | None = None
    ) -> None:
        errors = sorted(
            self._validator(schema_name, schema).iter_errors(instance), key=lambda e: list(e.absolute_path)
        )
        assert not errors, f"{schema_name or 'schema'}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in errors[:5]
        )


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    config = SimulatorConfig(clients={"c": ClientRegistration("s", ("http://127.0.0.1:9/cb",))}, now=CLOCK)
    with SimulatorServer(config) as running:
        running.control.set_clock(CLOCK, frozen=True)
        yield running


@pytest.fixture(scope="module")
def checker() -> Checker:
    return Checker()


def pages(http: httpx.Client, url: str, token: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
    params = dict(params)
    while True:
        response = http.get(url, params=params, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        body = response.json()
        yield body
        if not body.get("next_token"):
            return
        params["next_token"] = body["next_token"]


def test_the_vendored_schemas_are_the_specs(checker):
    if not SPEC.exists():
        pytest.skip(f"{SPEC} is not on this machine; the vendored extract stands in for it")
    spec = json.loads(SPEC.read_text())
    assert spec["openapi"].startswith("3.1")
    spec_schemas = spec["components"]["schemas"]
    vendored = load_schemas()
    assert {name: spec_schemas[name] for name in vendored} == vendored
    for route, schema in ROUTE_SCHEMAS.items():
        listed = spec["paths"][f"/v2/usercollection/{route}"]["get"]["responses"]["200"]["content"]
        assert f"MultiDocumentResponse_{schema}_" in json.dumps(listed)


def test_every_document_route_answers_in_the_spec_shape(server, checker):
    users = [f"schema-user-{i}" for i in range(4)]
    seen_in_progress = seen_meta = 0
    kinds: set[str] = set()
    served: dict[str, int] = dict.fromkeys(ROUTE_SCHEMAS, 0)
    values: dict[str, set[Any]] = {"workout": set(), "session": set(), "daily_resilience": set()}
    with httpx.Client(timeout=10) as http:
        for user in users:
            token = server.control.issue_tokens(user)["access_token"]
            for route, schema in ROUTE_SCHEMAS.items():
                url = f"{server.url}/v2/usercollection/{route}"
                start = "2024-01-10" if route in LONG_WINDOW else "2024-06-06"
                for body in pages(http, url, token, {"start_date": start, "end_date": "2024-06-21"}):
                    checker.validate(body, f"MultiDocumentResponse_{schema}_")
                    served[route] += len(body["data"])
                    for doc in body["data"]:
                        seen_meta += "meta" in doc
                        if route == "sleep":
                            kinds.add(doc["type"])
                            seen_in_progress += doc["bedtime_end"] is None
                        if route in values:
                            values[route].add(doc.get("activity") or doc.get("type") or doc.get("level"))
                if body["data"]:
                    single = http.get(
                        f"{url}/{body['data'][0]['id']}", headers={"Authorization": f"Bearer {token}"}
                    )
                    assert single.status_code == 200, (route, single.text)
                    checker.validate(single.json(), schema)
                    assert single.json() == body["data"][0]
    assert kinds == {"long_sleep", "sleep", "late_nap", "rest", "deleted"}
    assert seen_meta > 0
    # No route is an empty stub: each served documents for these users.
    assert not [route for route, count in served.items() if count == 0], served
    assert {"walking", "running"} <= values["workout"]
    assert "nap" in values["session"] and "meditation" in values["session"]
    assert len(values["daily_resilience"]) >= 2


def test_new_collections_are_missing_on_days_not_worn_and_follow_the_day(server):
    """SpO2 and cardiovascular age come with a synced night, stress with a worn day; none on unworn days."""
    name = "schema-days"
    days = [date(2024, 3, 1) + timedelta(days=n) for n in range(90)]
    plans = {day: simdata.plan(name, day) for day in days}
    by_day = {
        collection: {doc["day"] for doc in simdata.documents(name, collection, days, CLOCK)}
        for collection in ("daily_spo2", "daily_stress", "daily_resilience", "daily_cardiovascular_age")
    }
    not_worn = {d.isoformat() for d, p in plans.items() if not p.worn}
    nights = {d.isoformat() for d, p in plans.items() if p.worn and p.main_period is not None}
    worn_by_day = {d.isoformat() for d, p in plans.items() if p.worn and p.activity_visible_at is not None}
    assert not_worn, "the window should hold a day not worn"
    for collection, found in by_day.items():
        assert found, collection
        assert not found & not_worn, collection
    assert by_day["daily_spo2"] == nights == by_day["daily_cardiovascular_age"]
    assert by_day["daily_stress"] == worn_by_day
    assert by_day["daily_resilience"] == nights & worn_by_day


def test_daily_stress_is_revised_with_the_day(server):
    name, day = next(
        (n, date(2024, 5, 10))
        for n in (f"schema-revised-{i}" for i in range(200))
        if simdata.plan(n, date(2024, 5, 10)).revised_at is not None
        and simdata.plan(n, date(2024, 5, 10)).activity_visible_at is not None
    )
    plan = simdata.plan(name, day)
    assert plan.revised_at is not None
    before = simdata.documents(name, "daily_stress", [day], plan.revised_at - timedelta(seconds=1))
    after = simdata.documents(name, "daily_stress", [day], plan.revised_at + timedelta(hours=48))
    assert [d["id"] for d in before] == [d["id"] for d in after]
    assert before[0]["stress_high"] != after[0]["stress_high"]


def test_fields_keeps_the_named_fields_and_the_always_returned_ones(server, checker):
    token = server.control.issue_tokens("schema-user-0")["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    window = {"start_date": "2024-06-06", "end_date": "2024-06-21"}
    with httpx.Client(timeout=10) as http:
        for route, wanted in (
            ("daily_readiness", {"score"}),
            ("workout", {"activity", "calories"}),
            ("daily_spo2", {"spo2_percentage"}),
            ("daily_stress", {"stress_high", "recovery_high"}),
            ("session", {"type"}),
        ):
            url = f"{server.url}/v2/usercollection/{route}"
            full = http.get(url, params=window, headers=auth).json()["data"]
            narrow = http.get(url, params={**window, "fields": ",".join(wanted)}, headers=auth).json()["data"]
            assert full and len(narrow) == len(full), route
            for whole, part in zip(full, narrow, strict=True):
                assert set(part) == {"id", "day", *wanted}, (route, set(part))
                assert all(part[key] == whole[key] for key in part)
        # A route the spec says does not support field selection answers every field.
        url = f"{server.url}/v2/usercollection/daily_resilience"
        body = http.get(url, params={**window, "fields": "level"}, headers=auth).json()
        checker.validate(body, "MultiDocumentResponse_DailyResilienceModel_")
        rows = http.get(
            f"{server.url}/v2/usercollection/heartrate",
            params={
                "start_datetime": "2024-06-10T00:00:00+00:00",
                "end_datetime": "2024-06-10T06:00:00+00:00",
                "fields": "bpm",
            },
            headers=auth,
        ).json()["data"]
        assert rows and all(set(row) == {"bpm", "timestamp"} for row in rows)


def test_ring_configuration_ignores_dates_and_a_withheld_scope_answers_403(server, checker):
    with httpx.Client(timeout=10) as http:
        token = server.control.issue_tokens("schema-user-1")["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        url = f"{server.url}/v2/usercollection/ring_configuration"
        rings = http.get(url, headers=auth).json()
        checker.validate(rings, "MultiDocumentResponse_PublicRingConfiguration_")
        assert rings["data"]
        assert http.get(url, params={"start_date": "2024-06-20"}, headers=auth).json() == rings
        server.control.set_faults(users={"schema-user-1": {"withhold_scopes": ["workout"]}})
        try:
            forbidden = http.get(f"{server.url}/v2/usercollection/workout", headers=auth)
            allowed = http.get(f"{server.url}/v2/usercollection/session", headers=auth)
        finally:
            server.control.reset()
    assert forbidden.status_code == 403
    checker.validate(forbidden.json(), schema=PROBLEM)
    assert "workout" in forbidden.json()["detail"]
    assert allowed.status_code == 200


def test_in_progress_sleep_matches_the_spec_but_for_bedtime_end(server, checker):
    name, day = next(
        (n, date(2024, 6, 10))
        for n in (f"schema-night-{i}" for i in range(200))
        if simdata.plan(n, date(2024, 6, 10)).in_progress and simdata.plan(n, date(2024, 6, 10)).main_period
    )
    main = simdata.plan(name, day).main_period
    assert main is not None
    server.control.set_clock(main.start + timedelta(hours=3), frozen=True)
    try:
        token = server.control.issue_tokens(name)["access_token"]
        with httpx.Client(timeout=10) as http:
            url = f"{server.url}/v2/usercollection/sleep"
            window = {"start_date": str(day - timedelta(days=1)), "end_date": str(day + timedelta(days=1))}
            bodies = list(pages(http, url, token, window))
    finally:
        server.control.set_clock(CLOCK, frozen=True)
    docs = [doc for body in bodies for doc in body["data"]]
    assert any(doc["bedtime_end"] is None for doc in docs)
    for body in bodies:
        checker.validate(body, "MultiDocumentResponse_PublicModifiedSleepModel_")


def test_heartrate_and_personal_info_answer_in_the_spec_shape(server, checker):
    with httpx.Client(timeout=10) as http:
        for user in ("schema-user-0", "schema-user-1", "schema-user-2"):
            token = server.control.issue_tokens(user)["access_token"]
            url = f"{server.url}/v2/usercollection/heartrate"
            window = {
                "start_datetime": "2024-06-01T00:00:00+00:00",
                "end_datetime": "2024-06-08T00:00:00+00:00",
            }
            producer = 0
            for body in pages(http, url, token, window):
                checker.validate(body, "TimeSeriesResponse_PublicHeartRateRow_")
                producer += sum("producer_timestamp" in row for row in body["data"])
            assert producer > 0
            latest = http.get(url, params={"latest": "true"}, headers={"Authorization": f"Bearer {token}"})
            checker.validate(latest.json(), "TimeSeriesResponse_PublicHeartRateRow_")
            assert len(latest.json()["data"]) == 1
            info = http.get(
                f"{server.url}/v2/usercollection/personal_info", headers={"Authorization": f"Bearer {token}"}
            )
            checker.validate(info.json(), "PersonalInfoResponse")
        narrow = server.control.issue_tokens("schema-user-0", scopes=("daily",))["access_token"]
        info = http.get(
            f"{server.url}/v2/usercollection/personal_info", headers={"Authorization": f"Bearer {narrow}"}
        )
        checker.validate(info.json(), "PersonalInfoResponse")


def test_error_bodies_are_problem_details_or_fastapi_validation_errors(server, checker):
    base = f"{server.url}/v2/usercollection"
    token = server.control.issue_tokens("schema-errors", scopes=("daily",))["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=10) as http:
        answers = {
            401: http.get(f"{base}/sleep", headers={"Authorization": "Bearer nope"}),
            403: http.get(f"{base}/heartrate", headers=auth),
            404: http.get(f"{base}/sleep/00000000-0000-4000-8000-000000000000", headers=auth),
            400: http.get(
                f"{base}/sleep", params={"start_date": "2024-06-10", "end_date": "2024-06-01"}, headers=auth
            ),
        }
        bad = http.get(f"{base}/sleep", params={"start_date": "2024-06-31"}, headers=auth)
        server.control.set_faults(rate_limit={"limit": 0, "window_s": 60})
        try:
            answers[429] = http.get(f"{base}/sleep", headers=auth)
        finally:
            server.control.reset()
    for status, response in answers.items():
        assert response.status_code == status
        checker.validate(response.json(), schema=PROBLEM)
    assert bad.status_code == 422
    checker.validate(bad.json(), "HTTPValidationError")
    assert bad.json()["detail"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(unexpected="field"),
        lambda d: d.update(day="2024/06/01"),
        lambda d: d.update(timestamp="2024-06-01T00:00:00"),
        lambda d: d["contributors"].update(hrv_balance="high"),
        lambda d: d.pop("id"),
    ],
    ids=["unlisted-extra", "bad-day", "offsetless-timestamp", "string-score", "missing-id"],
)
def test_the_checker_rejects_what_the_spec_forbids(checker, mutate):
    doc = simdata.documents("schema-user-0", "daily_readiness", [date(2024, 6, 1), date(2024, 6, 2)], CLOCK)[
        0
    ]
    doc = copy.deepcopy(doc)
    checker.validate(doc, "PublicDailyReadiness")
    mutate(doc)
    with pytest.raises(AssertionError):
        checker.validate(doc, "PublicDailyReadiness")


def test_null_is_allowed_for_bedtime_end_only(checker):
    sleep = copy.deepcopy(simdata.documents("schema-user-0", "sleep", [date(2024, 6, 1)], CLOCK)[0])
    checker.validate({**sleep, "bedtime_end": None}, "PublicModifiedSleepModel")
    with pytest.raises(AssertionError):
        checker.validate({**sleep, "bedtime_start": None}, "PublicModifiedSleepModel")
    with pytest.raises(AssertionError):
        checker.validate(
            {"id": "x", "day": "2024-06-01", "contributors": {}, "timestamp": None}, "PublicDailySleep"
        )
