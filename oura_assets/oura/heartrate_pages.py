"""Heart-rate pages as Oura sent them (JSON bytes), parsed by DuckDB into Arrow columns in one statement.

A 90-day heart-rate sync is ~25,000 samples per patient, a nightly run holds hundreds of patients: parsing
each sample into a Python dict, checking it, re-serializing it and binding it back into DuckDB cost ~20 µs a
sample, most of a sync's local time. Here the pages stay bytes until DuckDB parses and screens them in one
query; vectorized Arrow compute windows and de-duplicates the columns it hands over (timestamp, source, bpm,
document), which the warehouse inserts as they are (`warehouse.replace_raw_heartrate_columns`). Python
touches each page once (for its `next_token`, `next_token_of`) and each sample never, except the rare ones
the screen rejects, whose reasons are worded by the same rule as before (`sync_errors.sample_problem`).

The parse runs on a process-wide in-memory DuckDB (one cursor per call: cursors of one database may be used
from several threads at once), never on the warehouse, so it happens before the warehouse lock is taken; at
most one parse per usable core runs at a time (`_process_parser`).
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
import polars as pl
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
# Most pages' `next_token` fits in their last 512 bytes: searched first, it costs a sixth of the 4 KiB search
# (3.6 against 21 us a page, ~0.1 us a heart-rate sample). Where both match they match the same member: a
# match depends only on the text from its start to the end, and a second `"next_token"` key inside a string
# value would need unescaped quotes.
_SHORT_TAIL_BYTES = 512

BPM_MIN, BPM_MAX = -(2**31), 2**31 - 1
"""The range of `oura_raw.heartrate.bpm` (INTEGER): a whole number outside it is a sample that cannot land,
left out and named like any other, instead of failing the cast and with it the patient's whole parse."""

# At most one parse per usable core at a time, process-wide: a run keeps many patients in flight for Oura's
# latency (16 by default), and their fetch threads would otherwise all parse at once beside the run's writer.
# Measured on 2 cores (the loading benchmark's pipeline, 200 patients x 90 days, alternated, idle host): 4
# fetch threads parsing freely 556-567 k samples/s, 3 threads 593-618 k, 2 threads 643 k; the CPU a sample
# fell with them (2.9 -> 2.75 us): parses beyond the cores only take turns on them, evicting each other's
# caches and the writer's.


@dataclass(frozen=True)
class _Parser:
    """The process's parse resources, made again in a forked child (a run worker): a DuckDB instance is not
    to be shared across fork, and a semaphore held at fork stays held in the child."""

    pid: int
    database: duckdb.DuckDBPyConnection
    slots: threading.BoundedSemaphore


_parser: _Parser | None = None
_parser_lock = threading.Lock()


def _usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it, else all of them)."""
    if hasattr(os, "sched_getaffinity"):  # Linux; not macOS
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _process_parser() -> _Parser:
    global _parser
    with _parser_lock:
        if _parser is None or _parser.pid != os.getpid():
            database = duckdb.connect(":memory:")
            # A timestamp without an offset is read as UTC, as Oura documents for heart rate.
            database.execute("SET TimeZone = 'UTC'")
            # One thread per parse: a sync parses several patients at once (one cursor each), and one
            # patient's pages (~25,000 samples for 90 days) are too few to split. Measured on a busy 2-core
            # host, DuckDB's default (a thread per core) spent ~1.3-1.7x the CPU for the same parse
            # (bench/README.md, loading).
            database.execute("SET threads = 1")
            _parser = _Parser(os.getpid(), database, threading.BoundedSemaphore(_usable_cores()))
        return _parser


class PageError(ValueError):
    """A page that is not Oura's envelope; `message` is safe to log (it names the route, never a token)."""


def next_token_of(body: bytes, path: str) -> str | None:
    """The page's `next_token` (None when absent or null); `PageError` when it is not Oura's envelope.

    Most pages are read from their two ends only (`_HEAD`, `_TAIL`); their validity as JSON is checked when
    DuckDB parses them (`parse_pages`). Any other page is parsed and checked in full here.
    """
    if _HEAD.match(body, 0, 64) is not None:
        match = _TAIL.search(body[-_SHORT_TAIL_BYTES:]) or _TAIL.search(body[-_TAIL_BYTES:])
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


# Pages are the rows of `_pages` (`p`: the page's text), an Arrow table registered on the cursor: bound as a
# list parameter instead, DuckDB's Python client converts each page as a Python value and tries (and fails,
# without pandas) to import pandas for each, ~0.6 µs a sample, a fifth of the parse.
#
# Each page is read twice by DuckDB's JSON reader, in one pass over the pages: `from_json` with a fixed
# schema hands over each sample's three fields as JSON text without any further parse, and `json_extract`
# hands over each sample's own text (the `document`); the two lists are unnested side by side (DuckDB zips
# unnests of one SELECT). A sample that is not an object gets NULL fields, as `json_extract` of its paths did.
# Both readers take a key's first occurrence and match keys case-sensitively, as `json_extract` does.
# A field's JSON text tells its type; a string's value is its text without the quotes unless it holds an
# escape (`_json_text`: DuckDB writes JSON back unescaped but for `"`, `\` and control characters, so only
# then is a second parse needed). Measured on the loading benchmark's pages (one thread, 296,611 samples):
# this query costs ~0.9 µs a sample; its previous form, which parsed each sample again for its fields
# (`json_extract` with a list of paths), each field again for its value, and numbered each sample with
# `generate_subscripts` (a third extraction of every page), cost ~1.5 µs.
#
# The rows come out in the order Oura sent them (no ORDER BY: DuckDB keeps the input's order, and the parse
# runs on one thread), which `parse_pages` numbers as `seen`. Oura sends heart rate in time order, so most
# patients' rows are already ordered by instant with none repeated; the others are sorted by instant, source
# and `seen`, so that a repeat sits right before the sample that wins over it (the last one seen) and
# `_last_of_each_key` drops it with two vectorized comparisons of neighbours (a hash aggregate keeping every
# column's `arg_max` had cost ~12 % more of the whole parse). `key_source` is the source's JSON text, or ''
# when it is absent, so samples without one repeat each other (`from_json` reads a `null` as absent, so
# `json_exists` tells the two apart, for the few samples without a source).
def _json_text(json: str) -> str:
    """SQL for `json->>'$'` of the VARCHAR expression `json` (a JSON value's text), without parsing it again
    when it is a string without escapes: then its value is its text without the quotes."""
    return (
        f"CASE WHEN starts_with({json}, '\"') AND NOT contains({json}, '\\') THEN ({json})[2:-2] "
        f"ELSE ({json}::JSON->>'$') END"
    )


_ROWS = f"""
WITH items AS (
    SELECT unnest(from_json(p, '{{"data": [{{"timestamp": "JSON", "source": "JSON", "bpm": "JSON"}}]}}').data)
               AS f,
           unnest(json_extract(p, '$.data[*]')) AS d
    FROM _pages
), read AS (
    SELECT d, f.source::VARCHAR AS source_json, f.bpm::VARCHAR AS bpm_json,
           TRY_CAST(f.bpm::VARCHAR AS DOUBLE) AS bpm_number,
           CASE WHEN starts_with(f.timestamp::VARCHAR, '"')
               THEN TRY_CAST({_json_text("f.timestamp::VARCHAR")} AS TIMESTAMPTZ) END AS timestamp
    FROM items
)
SELECT timestamp, source, CASE WHEN landable THEN CAST(bpm_json AS INTEGER) END AS bpm, document, landable,
       key_source
FROM (
    SELECT timestamp,
           {_json_text("source_json")} AS source,
           CASE WHEN source_json IS NOT NULL THEN source_json WHEN json_exists(d, '$.source') THEN 'null'
                ELSE '' END AS key_source,
           bpm_json, d::VARCHAR AS document,
           coalesce(timestamp IS NOT NULL AND starts_with(source_json, '"')
                    AND isfinite(bpm_number) AND bpm_number = floor(bpm_number)
                    AND bpm_number BETWEEN {BPM_MIN} AND {BPM_MAX},
                    false) AS landable
    FROM read
)
"""  # noqa: S608 (built once from constants: no value reaches it)


def _in_window(table: pa.Table, low: datetime, high: datetime) -> pa.Table:
    """The rows of `table` with an instant in [low, high), and those without one (the screen counts them).

    Here rather than in `_ROWS`' WHERE: DuckDB pushes such a filter below the projection that computes the
    instant, so it parsed every timestamp twice (~0.35 µs a sample, a quarter of the parse)."""
    instants = table.column("timestamp")
    bound = instants.type
    inside = pc.and_(
        pc.greater_equal(instants, pa.scalar(low, bound)), pc.less(instants, pa.scalar(high, bound))
    )
    keep = pc.fill_null(inside, True)
    return table if pc.all(keep).as_py() else table.filter(keep)


def _by_instant(table: pa.Table) -> pa.Table:
    """`table` (in the order Oura sent it) with `seen` (that order), ordered by instant (rows without one
    last), `key_source` and `seen`, and without the samples a later one repeats."""
    # polars' int_range: pyarrow has no vectorized arange (pa.array(range(n)) is ~100x slower).
    table = table.append_column("seen", pl.int_range(0, table.num_rows, eager=True).to_arrow())
    instants = table.column("timestamp")
    if instants.null_count == 0 and (
        table.num_rows < 2 or pc.all(pc.less(instants[:-1], instants[1:])).as_py()
    ):  # in strictly increasing time (Oura's order): already sorted, and no instant is repeated
        return table.drop_columns(["key_source"])
    table = table.sort_by(
        [("timestamp", "ascending", "at_end"), ("key_source", "ascending"), ("seen", "ascending")]
    )
    return _last_of_each_key(table)


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
    parser = _process_parser()
    with parser.slots:
        return _parse(parser.database, pages, low, high, path, keep_unreadable=keep_unreadable)


def _parse(
    database: duckdb.DuckDBPyConnection,
    pages: Sequence[bytes],
    low: datetime,
    high: datetime,
    path: str,
    *,
    keep_unreadable: bool,
) -> HeartRateColumns:
    texts = pa.table({"p": pa.array([page.decode("utf-8", errors="replace") for page in pages], pa.string())})
    cursor = database.cursor()  # one per call: cursors of one database may be used from several threads
    cursor.register("_pages", texts)
    try:
        try:
            parsed = cursor.execute(_ROWS).to_arrow_table()
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
    table = _by_instant(_in_window(parsed, low, high))
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
