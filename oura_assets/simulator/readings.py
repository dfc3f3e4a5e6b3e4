"""Readings: where Oura's behaviour is ambiguous or reported inconsistently, each plausible reading is a knob.

The simulator must be faithful to Oura, not to our client, so a client is only right if it lands the same
tables under every reading (see ../../shared/reference/OURA-NOTES.md). Set them in `SimulatorConfig.readings`
(the start-up default, which `DELETE /_sim/faults` returns to) or at run time with
`POST /_sim/faults {"readings": {...}}` / `SimulatorControl.set_readings(...)`:

- `date_ends` — what `start_date`/`end_date` select on the document routes:
  `exclusive` (the default: a date-only end is midnight and drops that day, open-wearables #1161, and on
  `sleep` the start is exclusive too, #1007), `inclusive` (both days kept), or `superset` (a day more on
  each side than asked, as a server filtering loosely would answer).
- `last_next_token` — how a time-series route (heart rate) ends its last page: `absent` (the default; the
  spec does not require the field there) or `null`. Document routes always answer `"next_token": null` on
  their last page because the spec requires the field.
- `timestamps` — how date-times are written in answers: `iso` (the default, `2024-06-10T07:15:00+02:00`),
  `space` (`2024-06-10 07:15:00+02:00`), `compact_offset` (`2024-06-10T07:15:00+0200`) or
  `space_compact_offset` (both). Oura's framework (FastAPI on pydantic) reads all of them in query
  parameters, and the simulator accepts them there under every reading.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CHOICES: dict[str, tuple[str, ...]] = {
    "date_ends": ("exclusive", "inclusive", "superset"),
    "last_next_token": ("absent", "null"),
    "timestamps": ("iso", "space", "compact_offset", "space_compact_offset"),
}

# A date-time as the data modules write it: `T` separator, optional fraction, `Z` or `±HH:MM`.
_ISO_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)(Z|([+-]\d{2}):(\d{2}))$")


@dataclass(frozen=True)
class Readings:
    """One choice per ambiguity; the defaults are the strictest reading the simulator always had."""

    date_ends: str = "exclusive"
    last_next_token: str = "absent"  # noqa: S105 (a reading's name, not a secret)
    timestamps: str = "iso"

    def __post_init__(self) -> None:
        for name, options in CHOICES.items():
            value = getattr(self, name)
            if value not in options:
                raise ValueError(f"reading {name} must be one of {options}, got {value!r}")

    def updated(self, changes: Mapping[str, Any] | None) -> Readings:
        """A partial update; unknown names raise ValueError so typos do not pass."""
        changes = dict(changes or {})
        unknown = set(changes) - set(CHOICES)
        if unknown:
            raise ValueError(f"unknown reading(s) {sorted(unknown)}; known: {sorted(CHOICES)}")
        return dataclasses.replace(self, **{name: str(value) for name, value in changes.items()})

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def coerce(cls, value: Readings | Mapping[str, Any] | None) -> Readings:
        if isinstance(value, Readings):
            return value
        return cls().updated(value)


def render_timestamp(text: str, style: str) -> str:
    """`text` in `style` when it is a date-time the data modules wrote; any other string unchanged."""
    if style == "iso":
        return text
    match = _ISO_DATETIME.match(text)
    if match is None:
        return text
    day, clock, offset, hours, minutes = match.groups()
    separator = " " if style in ("space", "space_compact_offset") else "T"
    if hours is not None and style in ("compact_offset", "space_compact_offset"):
        offset = hours + minutes
    return f"{day}{separator}{clock}{offset}"


def render(value: Any, style: str) -> Any:
    """A copy of a JSON value with every date-time string in `style` (the cached documents stay untouched)."""
    if style == "iso":
        return value
    if isinstance(value, str):
        return render_timestamp(value, style)
    if isinstance(value, dict):
        return {key: render(item, style) for key, item in value.items()}
    if isinstance(value, list):
        # Series items (`met`, `heart_rate`) are numbers: skip the walk when the first one is not text.
        if value and not isinstance(value[0], dict | list | str):
            return value
        return [render(item, style) for item in value]
    return value
