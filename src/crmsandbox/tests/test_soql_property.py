"""Property test: compiled SQL on SQLite agrees with the pure-Python reference evaluator.

Random Lead rows (with nulls, case variants, LIKE metacharacters, an OwnerId pointing at User rows, a missing
user or nothing) and random queries from a grammar (AND/OR/NOT trees of comparisons, IN, LIKE, date constants,
ORDER BY, LIMIT/OFFSET) are rendered as SOQL text, parsed, compiled, run, and compared with
``reference.evaluate``. Both break ORDER BY ties by insertion order (rowid), so lists are compared in order.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsandbox.soql import compile_query, evaluate, to_18
from crmsandbox.soql.testing import create_table, insert_rows, sample_schema

SCHEMA = sample_schema()
LEAD = SCHEMA.object("Lead")
USER = SCHEMA.object("User")
NOW = dt.datetime(2024, 3, 15, 12, 30, 0, tzinfo=dt.UTC)
USER_IDS = [to_18(f"005{n:012d}") for n in (1, 2, 3)]  # the third one has no User row
USERS = [
    {"Id": USER_IDS[0], "Username": "alice", "Email": "Alice@Example.com", "IsActive": 1},
    {"Id": USER_IDS[1], "Username": "Bob", "Email": None, "IsActive": 0},
]

STRINGS = [
    "",
    "a",
    "A",
    "ab",
    "aB",
    "AB",
    "abc",
    "b",
    "B%",
    "a_c",
    "A%C",
    "a%",
    "%",
    "_",
    "zz",
    "o'k",
    "x\\y",
    "é",
    "É",
    "a\nb",
]
STRING_FIELDS = ["FirstName", "LastName", "Company", "Email", "Status"]
NUMBER_FIELDS = {"NumberOfEmployees": "int", "AnnualRevenue": "currency", "Score": "double"}
BOOL_FIELDS = ["HasOptedOutOfEmail", "IsConverted"]
DATETIME_FIELDS = ["CreatedDate", "SystemModstamp"]
INTS = [-2, 0, 1, 3, 10]
FLOATS = [-1.5, 0.0, 0.5, 1.0, 2.25, 10.0]


def maybe(strategy, null_weight: int = 4):
    return st.one_of(st.none(), *([strategy] * null_weight))


dates = st.integers(-4, 4).map(lambda d: NOW.date() + dt.timedelta(days=d))
datetimes = st.builds(
    lambda days, secs, ms: (
        dt.datetime.combine(NOW.date(), dt.time(), dt.UTC)
        + dt.timedelta(days=days, seconds=secs, milliseconds=ms)
    ),
    st.integers(-4, 4),
    st.sampled_from([0, 1, 3600, 43200, 86399]),
    st.sampled_from([0, 1, 999]),
)


def stored_dt(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S") + f".{value.microsecond // 1000:03d}+0000"


def make_rows(n: int, seed: int) -> list[dict]:
    """``n`` random Lead rows; plain ``random`` seeded by hypothesis (much faster than drawing every cell)."""
    rnd = random.Random(seed)

    def maybe_value(values):
        return None if rnd.random() < 0.2 else rnd.choice(values)

    midnight = dt.datetime.combine(NOW.date(), dt.time(), dt.UTC)
    rows = []
    for i in range(n):
        row = {"Id": to_18(f"00Q{i + 1:012d}"), "IsDeleted": 1 if rnd.random() < 0.25 else 0}
        for f in STRING_FIELDS:
            row[f] = maybe_value(STRINGS)
        row["NumberOfEmployees"] = maybe_value(INTS)
        row["AnnualRevenue"] = maybe_value(FLOATS)
        row["Score"] = maybe_value(FLOATS + INTS)
        for f in BOOL_FIELDS:
            row[f] = rnd.choice([0, 1, 1, None])
        day = maybe_value(range(-4, 5))
        row["ConvertedDate"] = None if day is None else (NOW.date() + dt.timedelta(days=day)).isoformat()
        for f in DATETIME_FIELDS:
            day = maybe_value(range(-4, 5))
            stamp = midnight + dt.timedelta(
                days=day or 0,
                seconds=rnd.choice([0, 1, 3600, 43200, 86399]),
                milliseconds=rnd.choice([0, 1, 999]),
            )
            row[f] = None if day is None else stored_dt(stamp)
        row["OwnerId"] = rnd.choice([*USER_IDS, None])
        picks = [v for v in ("a", "B", "c_d", "e%") if rnd.random() < 0.4]
        row["Interests"] = None if rnd.random() < 0.2 else ";".join(picks)
        rows.append(row)
    return rows


def lead_rows():
    return st.builds(make_rows, st.integers(0, 14), st.integers(0, 2**32 - 1))


# ---- SOQL rendering ----------------------------------------------------------------------------------------


def soql_string(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def soql_number(x) -> str:
    return repr(x)


def soql_datetime(value: dt.datetime, style: int) -> str:
    if style == 0:
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == 1:
        return value.strftime("%Y-%m-%dT%H:%M:%S") + f".{value.microsecond // 1000:03d}Z"
    shifted = value.astimezone(dt.timezone(dt.timedelta(hours=2)))
    return shifted.strftime("%Y-%m-%dT%H:%M:%S") + "+02:00"


def field_case(draw, name: str) -> str:
    return draw(st.sampled_from([name, name.lower(), name.upper()]))


@st.composite
def like_patterns(draw):
    """Mostly patterns derived from a stored value (so they match), with wildcards and escapes."""
    base = draw(st.sampled_from(STRINGS))
    out = ""
    for ch in base:
        choice = draw(st.integers(0, 5))
        if choice == 0:
            out += "_"
        elif choice == 1:
            out += "%"
        else:
            ch = ch.swapcase() if choice == 2 else ch
            out += {"%": "\\%", "_": "\\_", "\\": "\\\\", "'": "\\'", "\n": "\\n"}.get(ch, ch)
    if draw(st.booleans()):
        out = "%" + out
    if draw(st.booleans()):
        out += "%"
    return f"'{out}'"


date_constants = st.one_of(
    st.sampled_from(
        ["TODAY", "YESTERDAY", "TOMORROW", "THIS_MONTH", "LAST_MONTH", "NEXT_MONTH", "THIS_YEAR"]
    ),
    st.builds(
        lambda name, n: f"{name}:{n}",
        st.sampled_from(["LAST_N_DAYS", "NEXT_N_DAYS", "N_DAYS_AGO"]),
        st.integers(0, 4),
    ),
)

OPS = ["=", "!=", "<>", "<", "<=", ">", ">="]


LEAF_KINDS = [
    "string", "like", "number", "bool", "date", "datetime", "dconst", "owner", "id", "parent", "includes",
]  # fmt: skip


@st.composite
def leaf(draw, kinds=LEAF_KINDS):
    kind = draw(st.sampled_from(kinds))
    op = draw(st.sampled_from(OPS))
    use_in = draw(st.integers(0, 4)) == 0
    null = st.just("null")
    if kind in ("string", "like", "parent"):
        f = field_case(draw, draw(st.sampled_from(STRING_FIELDS)))
        if kind == "parent" or (kind == "like" and draw(st.integers(0, 3)) == 0):
            f = draw(st.sampled_from(["Owner.Email", "owner.username", "Owner.Username"]))
        if kind == "like":
            return f"{f} LIKE {draw(like_patterns())}"
        values = st.one_of(st.sampled_from(STRINGS).map(soql_string), null)
    elif kind == "number":
        f = draw(st.sampled_from(list(NUMBER_FIELDS)))
        values = st.one_of(st.sampled_from(INTS + FLOATS).map(soql_number), null)
    elif kind == "bool":
        f = field_case(draw, draw(st.sampled_from(BOOL_FIELDS)))
        values = st.sampled_from(["true", "false", "TRUE", "False", "null"])
        op = draw(st.sampled_from(["=", "!="]))
    elif kind == "date":
        f = "ConvertedDate"
        values = st.one_of(dates.map(lambda d: d.isoformat()), null)
    elif kind == "datetime":
        f = draw(st.sampled_from(DATETIME_FIELDS))
        values = st.one_of(st.builds(soql_datetime, datetimes, st.integers(0, 2)), null)
    elif kind == "includes":
        specs = st.lists(
            st.sampled_from(["a", "A", "b", "c_d", "c%d", "e%", "x", " a ", ""]), max_size=3
        ).map(lambda parts: soql_string(";".join(parts)))
        items = draw(st.lists(specs, min_size=1, max_size=3))
        word = draw(st.sampled_from(["INCLUDES", "excludes"]))
        return f"Interests {word} ({', '.join(items)})"
    elif kind == "dconst":
        f = draw(st.sampled_from(["ConvertedDate", *DATETIME_FIELDS]))
        return f"{f} {op} {draw(date_constants)}"
    elif kind == "owner":
        f = "OwnerId"
        values = st.one_of(
            st.sampled_from(USER_IDS).map(
                lambda i: "'" + draw(st.sampled_from([i, i[:15], i.lower()])) + "'"
            ),
            st.just("''"),
            null,
        )
    else:
        f = "Id"
        values = (
            st.integers(1, 15)
            .map(lambda n: to_18(f"00Q{n:012d}"))
            .map(lambda i: "'" + draw(st.sampled_from([i, i[:15], i.lower()])) + "'")
        )
    if use_in:
        items = draw(st.lists(values, min_size=1, max_size=3))
        neg = draw(st.booleans())
        return f"{f} {'NOT IN' if neg else 'IN'} ({', '.join(items)})"
    value = draw(values)
    if value in ("null", "''"):
        op = draw(st.sampled_from(["=", "!="]))
    return f"{f} {op} {value}"


def conditions(depth: int = 3):
    base = leaf()
    if depth == 0:
        return base
    sub = conditions(depth - 1)
    return st.one_of(
        base,
        base,
        st.builds(lambda c: f"NOT ({c})", sub),
        st.builds(lambda c: f"NOT {c}", base),
        st.builds(
            lambda op, items: "(" + f" {op} ".join(f"({c})" for c in items) + ")",
            st.sampled_from(["AND", "OR", "and", "or"]),
            st.lists(sub, min_size=2, max_size=3),
        ),
    )


ORDERABLE = [*STRING_FIELDS, *NUMBER_FIELDS, *BOOL_FIELDS, "ConvertedDate", *DATETIME_FIELDS, "OwnerId",
             "Owner.Email", "Owner.Username"]  # fmt: skip
SELECTABLE = ["Id", *ORDERABLE]


@st.composite
def queries(draw, where: bool = True):
    count = draw(st.integers(0, 9)) == 0
    if count:
        select = "COUNT()"
    else:
        fields = draw(st.lists(st.sampled_from(SELECTABLE), min_size=1, max_size=6, unique=True))
        select = ", ".join(fields)
    soql = f"SELECT {select} FROM {draw(st.sampled_from(['Lead', 'lead', 'LEAD']))}"
    if where and draw(st.integers(0, 7)) > 0:
        soql += f" WHERE {draw(conditions())}"
    if not count:
        keys = draw(st.lists(st.sampled_from(ORDERABLE), max_size=3, unique=True))
        if keys and draw(st.booleans()):
            keys.append("Id")
        if keys:
            rendered = []
            for k in keys:
                item = k
                item += draw(st.sampled_from(["", " ASC", " DESC", " asc", " desc"]))
                item += draw(st.sampled_from(["", "", " NULLS FIRST", " NULLS LAST", " nulls last"]))
                rendered.append(item)
            soql += " ORDER BY " + ", ".join(rendered)
    if draw(st.booleans()):
        soql += f" LIMIT {draw(st.integers(0, 12))}"
    if draw(st.integers(0, 3)) == 0:
        soql += f" OFFSET {draw(st.integers(0, 8))}"
    return soql


def check(rows, soql, include_deleted=False, owner_id=None):
    conn = sqlite3.connect(":memory:")
    try:
        for obj in (LEAD, USER):
            # no column collation: the compiler must ask for case-insensitivity itself
            create_table(conn, obj, nocase=False)
        insert_rows(conn, USER, USERS)
        insert_rows(conn, LEAD, rows)
        kw = {"include_deleted": include_deleted, "owner_id": owner_id, "now": NOW}
        cq = compile_query(soql, SCHEMA, **kw)
        expected = evaluate(soql, SCHEMA, {LEAD.table: rows, USER.table: USERS}, **kw)
        count = conn.execute(cq.count_sql, cq.count_params).fetchone()[0]
        assert count == len(expected), soql
        if cq.is_count:
            return
        got = [cq.row_to_record(r) for r in conn.execute(cq.select_sql, cq.params)]
        assert got == expected, soql
        # keyset paging returns the same rows
        paged: list = []
        after = None
        while True:
            sql, params = cq.page_sql(after=after, page_size=3, already_returned=len(paged))
            page = conn.execute(sql, params).fetchall()
            paged.extend(cq.row_to_record(r) for r in page)
            if len(page) < 3:
                break
            after = cq.sort_key(page[-1])
        assert paged == expected, soql
    finally:
        conn.close()


PROFILE = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
flags = st.tuples(st.booleans(), st.sampled_from([None, None, None, *USER_IDS[:2]]))


@PROFILE
@given(rows=lead_rows(), soql=queries(), flags=flags)
def test_random_queries_match_reference(rows, soql, flags):
    check(rows, soql, *flags)


@pytest.mark.parametrize("kind", LEAF_KINDS)
@settings(PROFILE, max_examples=25)
@given(data=st.data())
def test_single_predicates_match_reference(kind, data):
    rows = data.draw(lead_rows(), label="rows")
    cond = data.draw(leaf([kind]), label="cond")
    if data.draw(st.booleans(), label="negate"):
        cond = f"NOT ({cond})"
    check(rows, f"SELECT Id, Owner.Email FROM Lead WHERE {cond}", *data.draw(flags, label="flags"))


@settings(PROFILE, max_examples=100)
@given(rows=lead_rows(), soql=queries(where=False), flags=flags)
def test_ordering_and_paging_match_reference(rows, soql, flags):
    check(rows, soql, *flags)


# ---- exhaustive grids for the rarer corners ---------------------------------------------------------------


def grid_rows(now: dt.datetime) -> list[dict]:
    """One row per (day offset, time of day) around ``now``, plus a row of nulls."""
    rows: list[dict] = []
    midnight = dt.datetime.combine(now.astimezone(dt.UTC).date(), dt.time(), dt.UTC)
    for day in range(-40, 41):
        for secs, ms in ((0, 0), (43200, 0), (86399, 999)):
            stamp = midnight + dt.timedelta(days=day, seconds=secs, milliseconds=ms)
            rows.append(
                {
                    "Id": to_18(f"00Q{len(rows) + 1:012d}"),
                    "CreatedDate": stored_dt(stamp),
                    "SystemModstamp": stored_dt(stamp),
                    "ConvertedDate": stamp.date().isoformat(),
                }
            )
    rows.append({"Id": to_18(f"00Q{len(rows) + 1:012d}")})
    return rows


GRID_CONSTANTS = [
    "TODAY", "YESTERDAY", "TOMORROW", "THIS_MONTH", "LAST_MONTH", "NEXT_MONTH", "THIS_YEAR", "LAST_YEAR",
    "NEXT_YEAR", "LAST_N_DAYS:0", "LAST_N_DAYS:1", "LAST_N_DAYS:7", "NEXT_N_DAYS:0", "NEXT_N_DAYS:1",
    "NEXT_N_DAYS:30", "N_DAYS_AGO:0", "N_DAYS_AGO:3",
]  # fmt: skip
GRID_NOWS = [
    dt.datetime(2024, 3, 15, 12, 30, tzinfo=dt.UTC),
    dt.datetime(2024, 1, 1, 0, 0, tzinfo=dt.UTC),
    dt.datetime(2024, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC),
    dt.datetime(2024, 2, 29, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3))),  # = Mar 1 02:00 UTC
]


@pytest.mark.parametrize("now", GRID_NOWS, ids=lambda n: n.isoformat())
def test_date_constants_grid(now):
    rows = grid_rows(now)
    conn = sqlite3.connect(":memory:")
    create_table(conn, LEAD, nocase=False)
    insert_rows(conn, LEAD, rows)
    for field in ("CreatedDate", "ConvertedDate"):
        for const in GRID_CONSTANTS:
            for op in ("=", "!=", "<", "<=", ">", ">="):
                for negate in (False, True):
                    cond = f"{field} {op} {const}"
                    soql = f"SELECT Id FROM Lead WHERE {f'NOT ({cond})' if negate else cond}"
                    cq = compile_query(soql, SCHEMA, now=now)
                    got = [cq.row_to_record(r) for r in conn.execute(cq.select_sql, cq.params)]
                    assert got == evaluate(soql, SCHEMA, {LEAD.table: rows}, now=now), soql
    conn.close()


LIKE_SUBJECTS = [
    "",
    "a",
    "A",
    "ab",
    "AB",
    "abc",
    "a%c",
    "a_c",
    "axc",
    "%",
    "_",
    "\\",
    "a\\c",
    "é",
    "É",
    "x\ny",
]
LIKE_PATTERNS = [
    "''", "'%'", "'_'", "'a'", "'A%'", "'%c'", "'a_c'", "'a\\_c'", "'a\\%c'", "'a%c'", "'%\\%%'", "'\\_'",
    "'\\\\'", "'%\\\\%'", "'__'", "'_%_'", "'é'", "'%\\n%'", "'%B'",
]  # fmt: skip


def test_like_grid():
    rows = [{"Id": to_18(f"00Q{i + 1:012d}"), "Company": s} for i, s in enumerate([*LIKE_SUBJECTS, None])]
    conn = sqlite3.connect(":memory:")
    create_table(conn, LEAD, nocase=False)
    insert_rows(conn, LEAD, rows)
    matched = 0
    for pattern in LIKE_PATTERNS:
        for negate in (False, True):
            cond = f"Company LIKE {pattern}"
            soql = f"SELECT Company FROM Lead WHERE {f'NOT {cond}' if negate else cond}"
            cq = compile_query(soql, SCHEMA)
            got = [cq.row_to_record(r) for r in conn.execute(cq.select_sql, cq.params)]
            assert got == evaluate(soql, SCHEMA, {LEAD.table: rows}), soql
            matched += len(got)
    assert matched > 0
    conn.close()
