"""Reading one task's CDC log window (DESIGN §3): one prepared `IN` query, paged, rows
grouped into changes by (stream, cdc$time) up to `cdc$end_of_batch`."""
from __future__ import annotations

import logging
from collections.abc import Iterator

from relay.discovery import as_datetime
from relay.model import Change

log = logging.getLogger(__name__)

STREAM, TIME, SEQ, END = "cdc$stream_id", "cdc$time", "cdc$batch_seq_no", "cdc$end_of_batch"


def log_table(table: str) -> str:
    ks, name = table.split(".", 1)
    return f'{ks}."{name}_scylla_cdc_log"'


class LogReader:
    def __init__(self, session, table: str, bypass_cache: str = "auto", fetch_size: int = 5000) -> None:
        from cassandra import InvalidRequest
        from cassandra.protocol import SyntaxException

        self.session = session
        self.table = table
        self.fetch_size = fetch_size
        base = (f'SELECT * FROM {log_table(table)} WHERE "cdc$stream_id" IN ? '
                f'AND "cdc$time" >= minTimeuuid(?) AND "cdc$time" < minTimeuuid(?)')
        self.stmt = None
        if bypass_cache in ("auto", "true"):
            driver_log = logging.getLogger("cassandra.cluster")
            level = driver_log.level
            # The probe fails on Cassandra; the driver would log that failure as an ERROR.
            driver_log.setLevel(logging.CRITICAL)
            try:
                # Scylla: don't let a one-pass scan of the log evict the hot cache.
                self.stmt = session.prepare(base + " BYPASS CACHE")
            except (SyntaxException, InvalidRequest):
                if bypass_cache == "true":
                    raise
            finally:
                driver_log.setLevel(level)
        if self.stmt is None:
            self.stmt = session.prepare(base)
        self.stmt.fetch_size = fetch_size

    def start(self, streams: tuple[bytes, ...], start_us: int, end_us: int):
        """Send the window's first page request now; `read(..., future=)` collects it later."""
        return self.session.execute_async(self.stmt, (list(streams), as_datetime(start_us), as_datetime(end_us)))

    def read(self, streams: tuple[bytes, ...], start_us: int, end_us: int, future=None) -> Iterator[Change]:
        """Changes with start <= cdc$time < end (ms bounds, as minTimeuuid takes), in stream order."""
        if future is not None:
            rs = future.result()
        else:
            rs = self.session.execute(self.stmt, (list(streams), as_datetime(start_us), as_datetime(end_us)))
        group: list[dict[str, object]] = []
        key: tuple[bytes, object] | None = None
        while True:
            # Decode by each page's own column names: ALTER TABLE may change them mid-read.
            names = rs.column_names
            for raw in rs.current_rows:
                row = dict(zip(names, raw, strict=False))
                row_key = (row[STREAM], row[TIME])
                if key is not None and row_key != key and group:
                    log.warning("%s: CDC group %s ended without cdc$end_of_batch", self.table, key[1])
                    yield Change(key[0], key[1], tuple(group))  # type: ignore[arg-type]
                    group = []
                key = row_key
                group.append(row)
                if row.get(END):
                    yield Change(row[STREAM], row[TIME], tuple(group))  # type: ignore[arg-type]
                    group, key = [], None
            if not rs.has_more_pages:
                break
            rs.fetch_next_page()
        if group and key is not None:
            log.warning("%s: CDC group %s ended without cdc$end_of_batch", self.table, key[1])
            yield Change(key[0], key[1], tuple(group))  # type: ignore[arg-type]
