"""Planner statistics refreshed while a bulk load grows a table."""

from __future__ import annotations

import pytest
from django.db import connection

from loopline.platform.dbstats import GrowthAnalyzer


def _last_analyzed(table: str):
    with connection.cursor() as cursor:
        cursor.execute("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = %s", [table])
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_tables_are_analyzed_each_time_the_load_doubles():
    if connection.vendor != "postgresql":
        pytest.skip("ANALYZE statistics are PostgreSQL's")
    table = "prospects_prospect"
    before = _last_analyzed(table)  # other tests (a big email send) may have analyzed it already
    analyzer = GrowthAnalyzer(table, first=3)
    analyzer.added(2)
    assert _last_analyzed(table) == before
    analyzer.added(2)  # 4 rows: past the first threshold
    first = _last_analyzed(table)
    assert first is not None and (before is None or first > before) and analyzer.next_at == 8
    analyzer.added(3)  # 7 < 8: not yet
    assert _last_analyzed(table) == first
    analyzer.added(1)
    assert _last_analyzed(table) > first


@pytest.mark.django_db
def test_inside_a_transaction_nothing_is_analyzed_and_the_count_goes_on():
    analyzer = GrowthAnalyzer("prospects_prospect", first=1)
    analyzer.added(5)  # the test's transaction is open: ANALYZE would commit it
    assert analyzer.count == 5 and analyzer.next_at == 10
