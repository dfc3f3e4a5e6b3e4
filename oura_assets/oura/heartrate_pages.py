"""Heart-rate pages as Oura sent them (JSON bytes), parsed by DuckDB into columns in one statement.

A 90-day heart-rate sync is ~25,000 samples per patient, a nightly run holds hundreds of patients: parsing
each sample into a Python dict, checking it, re-serializing it and binding it back into DuckDB cost ~20 µs a
sample, most of a sync's local time. Here the pages stay bytes until DuckDB parses them, screens, windows and
de-duplicates them in one query, and hands over Arrow columns (timestamp, source, bpm, document) that the
warehouse inserts as they are (`warehouse.replace_raw_heartrate_columns`). Python touches each page once (for
its `next_token`, `next_token_of`) and each sample never, except the rare ones the screen rejects, whose
reasons are worded by the same rule as before (`sync_errors.sample_problem`).

The parse runs on a process-wide in-memory DuckDB (one cursor per call: cursors of one database may be used
from several threads at once), never on the warehouse, so it happens before the warehouse lock is taken.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

# Oura's pages are `{"data": [...], "next_token": ...}` [spec]; these two read the envelope from its ends
# without parsing the samples. Given a valid JSON document (DuckDB's parse of every page checks that, and
# the page fails if not), `_HEAD` can only match a top-level object whose first member is the `data` array,
# and `_TAIL` only its last member `next_token` (a string cannot hold the unescaped quotes around
# `next_token` and its value, and the final `}` closes the top-level object). A page of any other shape is
# parsed in full by Python (`check_envelope`), as every page was before.
_HEAD = re.compile(rb'\A\s*\{\s*"data"\s*:\s*\[')
_TAIL = re.compile(rb'[{,]\s*"next_token"\s*:\s*(null|"(?:[^"\\]|\\.)*")\s*}\s*\Z')
_TAIL_BYTES = 4096

_JSON_TYPE_NAMES = {
    "ARRAY": "list",
    "OBJECT": "dict",
    "VARCHAR": "str",
    "UBIGINT": "int",
    "BIGINT": "int",
    "DOUBLE": "float",
    "BOOLEAN": "bool",
    "NULL": "NoneType",
}

_database: duckdb.DuckDBPyConnection | None = None
_database_pid: int | None = None
_database_lock = threading.Lock()


class PageError(ValueError):
    """A page that is not Oura's envelope; `message` is safe to log (it names the route, never a token)."""


def _cursor() -> duckdb.DuckDBPyConnection:
    global _database, _database_pid
    with _database_lock:
        # A forked child (a run worker) opens its own: a DuckDB instance is not to be shared across fork.
        if _database is None or _database_pid != os.getpid():
            database = duckdb.connect(":memory:")
            # A timestamp without an offset is read as UTC, as Oura documents for heart rate.
            database.execute("SET TimeZone = 'UTC'")
            # One thread per parse: a sync parses several patients at once (one cursor each), and one
            # patient's pages (~25,000 samples for 90 days) are too few to split. Measured on a busy 2-core
            # host, DuckDB's default (a thread per core) spent ~1.3-1.7x the CPU for the same parse
            # (bench/README.md, loading).
            database.execute("SET threads = 1")
            _database, _database_pid = database, os.getpid()
        return _database.cursor()


def next_token_of(body: bytes, path: str) -> str | None:
    """The page's `next_token` (None when absent or null); `PageError` when it is not Oura's envelope.

    Most pages are read from their two ends only (`_HEAD`, `_TAIL`); their validity as JSON is checked when
    DuckDB parses them (`parse_pages`). Any other page is parsed and checked in full here.
    """
    if _HEAD.match(body, 0, 64) is not None:
        tail = body[-_TAIL_BYTES:]
        match = _TAIL.search(tail)
        if match is not None:
            token = match.group(1)
            return None if token == b"null" else json.loads(token) or None
        if b'"next_token"' not in body and b"\\u" not in body:
            # Time series may leave `next_token` out on the last page [spec]: without the key's text (and
            # without escapes that could spell it) the page has none.
            return None
    try:
        page = json.loads(body)
    except ValueError:
        raise PageError(f"GET {path} answered 200 with a body that is not JSON") from None
    check_envelope(page, path)
    token = page.get("next_token")
    if token is not None and not isinstance(token, str):
        raise PageError(f"GET {path} answered a `next_token` that is not a string")
    return token or None


def check_envelope(page: Any, path: str) -> None:
    """Raise `PageError` unless `page` is an object with a `data` list [spec]."""
    if not isinstance(page, dict):
        raise PageError(f"GET {path} answered {type(page).__name__}, not a JSON object")
    if "data" not in page:
        raise PageError(f"GET {path} answered an object without `data`")
    if not isinstance(page["data"], list):
        raise PageError(f"GET {path} answered `data` as {type(page['data']).__name__}, not a list")


@dataclass(frozen=True)
class HeartRateColumns:
    """One patient's heart-rate samples in a window, as columns: one row per (instant, source), by time.

    `table` has `timestamp` (UTC), `source`, `bpm`, `document` (the sample as Oura sent it, JSON text) and
    `landable` (False for a sample the screen rejects: `source` not a string, `bpm` not a whole number) and
    `seen` (the order Oura sent the samples in).
    `unreadable` counts samples left out for having no readable timestamp (or not being an object).
    """

    table: pa.Table
    unreadable: int
    pages: int

    def __len__(self) -> int:
        return self.table.num_rows

    def samples(self) -> list[dict[str, Any]]:
        """Every sample as the dict Oura sent (slow: for callers that want Python objects, not the sync)."""
        return [json.loads(document) for document in self.table.column("document").to_pylist()]

    def landable(self) -> pa.Table:
        """The samples that can land (`landable`), without that column."""
        return self.table.filter(self.table.column("landable")).drop_columns(["landable", "seen"])

    def rejected_documents(self) -> list[Any]:
        """The samples the screen rejected, parsed, in the order Oura sent them."""
        rejected = self.table.filter(pc.invert(self.table.column("landable"))).sort_by("seen")
        return [json.loads(document) for document in rejected.column("document").to_pylist()]


# Pages are the rows of `_pages` (`p`: the page's text, `page`: its number), an Arrow table registered on the
# cursor: bound as a list parameter instead, DuckDB's Python client converts each page as a Python value and
# tries (and fails, without pandas) to import pandas for each, ~0.6 µs a sample, a fifth of the parse. Each
# page's `data` elements are unnested with their position, so "the last one seen wins" among repeated samples
# means the highest `seen` (page, position). The rows come out ordered by instant, source and `seen` (the
# insert and the table's compression like time order), so a repeat sits right before the sample that wins
# over it and `_last_of_each_key` drops it with two vectorized comparisons of neighbours. That replaced a hash
# aggregate keeping the `arg_max` of every column, which cost ~12 % more of the whole parse (1.72 against
# 1.50 µs a sample, alternated 4 times; a window partitioned by instant and source had cost ~1.2x the
# aggregate). Samples without a readable timestamp sort last and are never dropped, so `parse_pages` counts
# them from the result. Each sample's three fields are read with one parse of the sample (`json_extract`
# with a list of paths); their JSON text tells their type. `key_source` is the source's JSON text, or ''
# when it is absent, so samples without one repeat each other as they did in the aggregate.
_ROWS = """
WITH items AS (
    SELECT page, unnest(items) AS d, generate_subscripts(items, 1) AS pos
    FROM (SELECT page, json_extract(p, '$.data[*]') AS items FROM _pages)
), read AS (
    SELECT (page << 32) + pos AS seen, d, f[2]::VARCHAR AS source_json, f[3]::VARCHAR AS bpm_json,
           CASE WHEN starts_with(f[1]::VARCHAR, '"') THEN TRY_CAST((f[1]->>'$') AS TIMESTAMPTZ) END
               AS timestamp
    FROM (SELECT page, pos, d, json_extract(d, ['$.timestamp', '$.source', '$.bpm']) AS f FROM items)
)
SELECT timestamp, source, CASE WHEN landable THEN CAST(bpm_json AS INTEGER) END AS bpm, document, landable,
       seen, key_source
FROM (
    SELECT seen, timestamp, (source_json::JSON->>'$') AS source, coalesce(source_json, '') AS key_source,
           bpm_json, d::VARCHAR AS document,
           coalesce(timestamp IS NOT NULL AND starts_with(source_json, '"')
                    AND isfinite(TRY_CAST(bpm_json AS DOUBLE))
                    AND TRY_CAST(bpm_json AS DOUBLE) = floor(TRY_CAST(bpm_json AS DOUBLE)),
                    false) AS landable
    FROM read
    WHERE (timestamp >= $low AND timestamp < $high) OR timestamp IS NULL
)
ORDER BY timestamp, key_source, seen
"""


def _last_of_each_key(table: pa.Table) -> pa.Table:
    """`table` (ordered by instant, `key_source` and `seen`) without the samples a later one repeats: a row
    goes when the next row has its instant and source. Rows without an instant are all kept."""
    if table.num_rows > 1:
        instants, sources = table.column("timestamp"), table.column("key_source")
        repeated = pc.and_(
            pc.equal(instants[:-1], instants[1:]), pc.equal(sources[:-1], sources[1:])
        )  # null (kept) where an instant is missing
        keep = pa.chunked_array([*pc.invert(pc.fill_null(repeated, False)).chunks, pa.array([True])])
        table = table.filter(keep)
    return table.drop_columns(["key_source"])


def parse_pages(
    pages: Sequence[bytes], low: datetime, high: datetime, path: str, *, keep_unreadable: bool = False
) -> HeartRateColumns:
    """The samples of `pages` with an instant in [low, high), one per (instant, source): the last one wins.

    Samples without a readable timestamp (or that are not objects) are counted in `unreadable` and left out,
    or with `keep_unreadable` kept as not `landable` (so a screen names them).

    Raises `PageError` for a page that is not JSON (the pages' envelopes were read by `next_token_of`).
    """
    texts = pa.table(
        {
            "p": pa.array([page.decode("utf-8", errors="replace") for page in pages], pa.string()),
            "page": pa.array(range(1, len(pages) + 1), pa.int64()),
        }
    )
    cursor = _cursor()
    cursor.register("_pages", texts)
    try:
        try:
            parsed = cursor.execute(_ROWS, {"low": low, "high": high}).to_arrow_table()
        except duckdb.InvalidInputException:
            for number, page in enumerate(pages, 1):  # which page, in the words used for any malformed page
                try:
                    json.loads(page)
                except ValueError:
                    raise PageError(
                        f"GET {path} answered 200 with a body that is not JSON (page {number})"
                    ) from None
            raise
    finally:
        cursor.close()
    table = _last_of_each_key(parsed)
    # `document` as Arrow's JSON extension type (the same text, not copied), which DuckDB reads back as JSON:
    # the warehouse's insert then need not parse every sample again to validate it, as a VARCHAR -> JSON cast
    # does (0.13 us a sample, about a tenth of the writer's insert).
    json_type = pa.json_()
    documents = [pa.ExtensionArray.from_storage(json_type, c) for c in table.column("document").chunks]
    table = table.set_column(
        table.schema.get_field_index("document"),
        pa.field("document", json_type),
        pa.chunked_array(documents, json_type),
    )
    unreadable = table.column("timestamp").null_count
    if unreadable and not keep_unreadable:
        table = table.filter(pc.is_valid(table.column("timestamp")))
    return HeartRateColumns(table=table, unreadable=unreadable, pages=len(pages))


def columns_of_samples(samples: Sequence[Any], low: datetime, high: datetime) -> HeartRateColumns:
    """Samples already held as Python values (a test's fake client, a replayed export) as one page, parsed.

    The same parse as Oura's pages get, so such samples are windowed, de-duplicated and screened alike;
    those without a readable timestamp are kept, not `landable`, for the screen to name.
    """
    body = json.dumps({"data": list(samples)}, ensure_ascii=False, separators=(",", ":")).encode()
    return parse_pages([body], low, high, "samples", keep_unreadable=True)
