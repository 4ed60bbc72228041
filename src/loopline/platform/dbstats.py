"""Fresh planner statistics while a bulk load grows a table (PostgreSQL).

Autovacuum analyzes a table after a share of it changed, on its own schedule: during a fast load a table that grew
from nothing to 300,000 rows in minutes can still carry the statistics of an empty one. The planner then believes a
business unit has a few hundred prospects and reads all of them for every batch of 2,000 e-mail addresses — a second
per batch instead of a few milliseconds. Loads call :meth:`GrowthAnalyzer.added`; each time the rows added since the
process started double (from ``first`` on), the tables are analyzed (a sample: a fraction of a second).
"""

from __future__ import annotations

import logging
import threading

from django.db import connection

logger = logging.getLogger("loopline.platform")


class GrowthAnalyzer:
    def __init__(self, *tables: str, first: int = 20_000, factor: float = 2.0):
        self.tables = tables
        self.factor = factor
        self.count = 0
        self.next_at = first
        self._lock = threading.Lock()

    def added(self, rows: int) -> None:
        """Count ``rows`` written; analyze when due. Call outside a transaction (it commits on its own)."""
        with self._lock:
            self.count += rows
            if self.count < self.next_at:
                return
            self.next_at = int(self.count * self.factor)
        if connection.vendor != "postgresql" or connection.in_atomic_block:
            return
        with connection.cursor() as cursor:
            for table in self.tables:
                cursor.execute(f"ANALYZE {connection.ops.quote_name(table)}")
        logger.info("analyzed %s after %d rows loaded", ", ".join(self.tables), self.count)
