"""The Markdown preview on each materialization: a few rows of what the run's range now holds, so a reader of
the UI sees the data itself beside its row count. Presentation only; the rows come from `wh.preview_rows`
(no secrets: none of the previewed tables holds one; patient ids are shown).
"""

from collections.abc import Iterable
from datetime import date

import dagster as dg

from oura_assets import warehouse as wh

PREVIEW_ROWS = 5
_CELL_CHARS = 60


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= _CELL_CHARS else text[: _CELL_CHARS - 1] + "…"


def markdown_table(columns: list[str], rows: Iterable[tuple]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def preview_markdown(previews: Iterable[wh.Preview]) -> str:
    parts = []
    for preview in previews:
        body = markdown_table(preview.columns, preview.rows) if preview.rows else "_no rows in this range_"
        parts.append(f"**{preview.table}** (newest first)\n\n{body}")
    return "\n\n".join(parts)


def preview_metadata(
    warehouse: wh.WarehouseAccess,
    tables: Iterable[str],
    start: date,
    end: date,
    patient_id: str | None,
    purpose: str,
) -> dict[str, dg.MetadataValue]:
    """`preview`: a few of the rows the run's range now holds in `tables` (read in one short connection)."""
    with warehouse.connect(f"{purpose}: preview") as conn:
        previews = [
            wh.preview_rows(conn, table, start, end, patient_id, limit=PREVIEW_ROWS) for table in tables
        ]
    return {"preview": dg.MetadataValue.md(preview_markdown(previews))}
