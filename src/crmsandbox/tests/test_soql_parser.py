"""Tokenizer/parser tests for the SOQL subset."""

from __future__ import annotations

import datetime as dt

import pytest

from crmsandbox.soql import SoqlError, parse
from crmsandbox.soql.ast import And, Comparison, DateConstant, Includes, InList, Like, Not, Or
from crmsandbox.soql.ids import normalize_id, to_18


def where(text: str):
    return parse(f"SELECT Id FROM Lead WHERE {text}").where


def test_object_names_that_look_like_keywords():
    assert parse("SELECT Id, Name FROM Group WHERE Type = 'Queue'").object_name == "Group"
    assert parse("SELECT Id FROM Order").object_name == "Order"


def test_simple_select():
    q = parse("SELECT Id, LastName, Owner.Email FROM Lead")
    assert q.object_name == "Lead"
    assert [f.parts for f in q.fields] == [("Id",), ("LastName",), ("Owner", "Email")]
    assert q.where is None and q.order_by == () and q.limit is None and q.offset is None
    assert not q.is_count


def test_keywords_are_case_insensitive():
    q = parse(
        "select id from lead where email = 'x' and isconverted = FALSE order by email desc nulls first limit 5"
    )
    assert q.object_name == "lead"
    assert isinstance(q.where, And)
    assert q.order_by[0].descending and q.order_by[0].nulls_first
    assert q.limit == 5


def test_count():
    q = parse("SELECT COUNT() FROM Lead WHERE Email != null")
    assert q.is_count and q.fields == ()
    assert parse("select count ( ) from Lead").is_count


def test_comparison_operators():
    for op, norm in [
        ("=", "="),
        ("!=", "!="),
        ("<>", "!="),
        ("<", "<"),
        ("<=", "<="),
        (">", ">"),
        (">=", ">="),
    ]:
        c = where(f"NumberOfEmployees {op} 10")
        assert isinstance(c, Comparison) and c.op == norm and c.value.value == 10


def test_operators_without_spaces():
    c = where("NumberOfEmployees>=-5")
    assert c.op == ">=" and c.value.value == -5


def test_literals():
    assert where("Score = 1.5").value.value == 1.5
    assert where("Score = -2").value.value == -2
    assert where("Email = null").value.kind == "null"
    assert where("IsConverted = TRUE").value.value is True
    assert where("IsConverted = false").value.value is False
    d = where("ConvertedDate = 2024-02-29").value
    assert d.kind == "date" and d.value == dt.date(2024, 2, 29)


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("2024-01-01T00:00:00Z", dt.datetime(2024, 1, 1, tzinfo=dt.UTC)),
        ("2024-01-01T00:00:00.123Z", dt.datetime(2024, 1, 1, 0, 0, 0, 123000, tzinfo=dt.UTC)),
        ("2024-01-01T01:30:00+01:00", dt.datetime(2024, 1, 1, 0, 30, tzinfo=dt.UTC)),
        ("2024-01-01T00:00:00-05:00", dt.datetime(2024, 1, 1, 5, 0, tzinfo=dt.UTC)),
        ("2024-01-01T00:00:00.1234567Z", dt.datetime(2024, 1, 1, 0, 0, 0, 123000, tzinfo=dt.UTC)),
    ],
)
def test_datetime_literals(literal, expected):
    v = where(f"CreatedDate > {literal}").value
    assert v.kind == "datetime" and v.value == expected


def test_date_constants():
    assert where("CreatedDate = TODAY").value.value == DateConstant("TODAY")
    assert where("CreatedDate = yesterday").value.value == DateConstant("YESTERDAY")
    assert where("CreatedDate = TOMORROW").value.value == DateConstant("TOMORROW")
    assert where("CreatedDate > LAST_N_DAYS:30").value.value == DateConstant("LAST_N_DAYS", 30)
    assert where("CreatedDate < next_n_days : 3").value.value == DateConstant("NEXT_N_DAYS", 3)


@pytest.mark.parametrize(
    ("soql_literal", "value", "pattern"),
    [
        (r"'O\'Brien'", "O'Brien", "O'Brien"),
        (r"'back\\slash'", "back\\slash", "back\\\\slash"),
        (r"'a\nb\tc'", "a\nb\tc", "a\nb\tc"),
        (r"'50\%'", "50%", "50\\%"),
        (r"'a\_b%'", "a_b%", "a\\_b%"),
        (r"'\u00e9'", "é", "é"),
        ("'日本'", "日本", "日本"),
        ("''", "", ""),
    ],
)
def test_string_escapes(soql_literal, value, pattern):
    c = where(f"LastName = {soql_literal}")
    assert c.value.value == value
    like = where(f"LastName LIKE {soql_literal}")
    assert isinstance(like, Like) and like.pattern == pattern


def test_in_and_not_in():
    c = where("Status IN ('Open', 'Closed')")
    assert isinstance(c, InList) and not c.negated and [v.value for v in c.values] == ["Open", "Closed"]
    c = where("Status NOT IN ('Open', null)")
    assert isinstance(c, InList) and c.negated and c.values[1].kind == "null"
    c = where("Id IN ('00Q000000000001')")
    assert c.values[0].value == "00Q000000000001"


def test_includes_excludes():
    c = where("Interests INCLUDES ('a;b', 'c')")
    assert isinstance(c, Includes) and not c.negated and [v.value for v in c.values] == ["a;b", "c"]
    c = where("Interests excludes ('a')")
    assert isinstance(c, Includes) and c.negated


def test_and_or_not_and_parentheses():
    c = where("(Email = 'a' OR Email = 'b') AND (NOT (Status = 'x' AND LastName LIKE 'y%'))")
    assert isinstance(c, And)
    assert isinstance(c.items[0], Or) and len(c.items[0].items) == 2
    assert isinstance(c.items[1], Not) and isinstance(c.items[1].item, And)
    c = where("NOT Email = 'a'")
    assert isinstance(c, Not)
    c = where("NOT (Email = 'a' OR Email = 'b')")
    assert isinstance(c, Not) and isinstance(c.item, Or)
    c = where("Email = 'a' AND (NOT Email = 'b')")
    assert isinstance(c, And) and isinstance(c.items[1], Not)
    c = where("NOT ((NOT (City LIKE '%x%')) AND City LIKE '%y%')")
    assert isinstance(c, Not) and isinstance(c.item, And) and isinstance(c.item.items[0], Not)
    c = where("a = 'x' OR b = 'y' OR c = 'z'")
    assert isinstance(c, Or) and len(c.items) == 3


def test_order_by_defaults():
    q = parse(
        "SELECT Id FROM Lead ORDER BY LastName, Email DESC, Score ASC NULLS LAST, Company DESC NULLS FIRST"
    )
    keys = [(o.field.text, o.descending, o.nulls_first) for o in q.order_by]
    assert keys == [
        ("LastName", False, True),
        ("Email", True, False),
        ("Score", False, False),
        ("Company", True, True),
    ]


def test_limit_offset():
    q = parse("SELECT Id FROM Lead LIMIT 10 OFFSET 2000")
    assert (q.limit, q.offset) == (10, 2000)
    assert parse("SELECT Id FROM Lead OFFSET 3").offset == 3


def test_whitespace_and_newlines():
    q = parse("SELECT\n  Id,\n  Email\nFROM\tLead\nWHERE Email != null\n")
    assert len(q.fields) == 2


@pytest.mark.parametrize(
    ("query", "token"),
    [
        ("SELECT Id FROMM Lead", "FROMM"),
        ("SELECT Id FROM Lead WHERE invalid", "<EOF>"),
        ("SELECT Id FROM Lead WHERE Email = invalid", "invalid"),
        ("SELECT FROM Lead", "FROM"),
        ("SELECT Id, FROM Lead", "FROM"),
        ("SELECT Id FROM Lead WHERE", "<EOF>"),
        ("SELECT Id FROM Lead WHERE Email = 'a' AND Email = 'b' OR Email = 'c'", "OR"),
        ("SELECT Id FROM Lead WHERE (Email = 'a'", "<EOF>"),
        ("SELECT Id FROM Lead LIMIT -1", "-1"),
        ("SELECT Id FROM Lead LIMIT 1.5", "1.5"),
        ("SELECT Id FROM Lead OFFSET 5 LIMIT 1", "LIMIT"),
        ("SELECT Id FROM Lead ORDER BY", "<EOF>"),
        ("SELECT Id FROM Lead ORDER BY Email NULLS", "<EOF>"),
        ("SELECT Id FROM Lead WHERE Email == 'a'", "="),
        ('SELECT Id FROM Lead WHERE Email = "a"', '"'),
        ("SELECT Id FROM Lead WHERE Email LIKE 5", "5"),
        ("SELECT Id FROM Lead WHERE Email IN 'a'", "'a'"),
        ("SELECT Id FROM Lead garbage", "garbage"),
        ("SELECT Id Email FROM Lead", "Email"),
        ("UPDATE Lead", "UPDATE"),
        ("SELECT COUNT() , Id FROM Lead", ","),
        ("SELECT Id FROM Lead WHERE CreatedDate > LAST_N_DAYS", "<EOF>"),
        ("SELECT Id FROM Lead WHERE Email NOT LIKE 'a'", "NOT"),
        ("SELECT Id FROM Lead WHERE Email = 'a' AND NOT Email = 'b'", "NOT"),
        ("SELECT Id FROM Lead WHERE Email = 'a' AND NOT (Email = 'b')", "NOT"),
        ("SELECT Id FROM Lead WHERE NOT Email = 'a' AND Email = 'b'", "AND"),
        ("SELECT Id FROM Lead WHERE NOT (Email = 'a') OR Email = 'b'", "OR"),
        ("SELECT Id FROM Lead WHERE NOT NOT Email = 'a'", "NOT"),
        ("SELECT Id FROM Lead WHERE Interests INCLUDES 'a'", "'a'"),
        ("SELECT Id FROM Lead WHERE Interests INCLUDES (1)", "1"),
    ],
)
def test_malformed(query, token):
    with pytest.raises(SoqlError) as info:
        parse(query)
    err = info.value
    assert err.error_code == "MALFORMED_QUERY"
    assert err.detail.startswith(f"unexpected token: '{token}'"), err.detail
    assert f"unexpected token: '{token}'" in err.message
    assert "ERROR at Row:1:Column:" in err.message


def test_error_position_is_reported():
    with pytest.raises(SoqlError) as info:
        parse("SELECT Id FROMM Lead")
    err = info.value
    assert (err.row, err.column) == (1, 11)
    assert (
        err.message
        == "\nSELECT Id FROMM Lead\n          ^\nERROR at Row:1:Column:11\nunexpected token: 'FROMM'"
    )
    assert err.to_json() == [{"message": err.message, "errorCode": "MALFORMED_QUERY"}]


def test_error_position_on_later_line():
    with pytest.raises(SoqlError) as info:
        parse("SELECT Id\nFROM Lead\nWHERE Email = oops")
    assert (info.value.row, info.value.column) == (3, 15)


def test_invalid_calendar_dates():
    for text in ["ConvertedDate = 2024-02-30", "CreatedDate > 2024-13-01T00:00:00Z"]:
        with pytest.raises(SoqlError) as info:
            where(text)
        assert info.value.error_code == "MALFORMED_QUERY"
        assert info.value.detail.startswith("unexpected token: '2024-")


def test_bad_escape():
    with pytest.raises(SoqlError) as info:
        parse(r"SELECT Id FROM Lead WHERE Email = 'a\qb'")
    assert info.value.error_code == "MALFORMED_QUERY"
    assert "Illegal character sequence '\\q'" in info.value.detail


def test_unterminated_string():
    with pytest.raises(SoqlError) as info:
        parse("SELECT Id FROM Lead WHERE Email = 'abc")
    assert info.value.error_code == "MALFORMED_QUERY"
    assert "'abc" in info.value.detail


def test_empty_query():
    with pytest.raises(SoqlError) as info:
        parse("   ")
    assert info.value.error_code == "MALFORMED_QUERY"


def test_offset_over_2000():
    with pytest.raises(SoqlError) as info:
        parse("SELECT Id FROM Lead LIMIT 10 OFFSET 2001")
    assert info.value.error_code == "NUMBER_OUTSIDE_VALID_RANGE"
    assert "Maximum SOQL offset allowed is 2000" in info.value.message


def test_unsupported_constructs_are_malformed():
    for text in [
        "SELECT COUNT(Id) FROM Lead",
        "SELECT toLabel(Status) FROM Lead",
        "SELECT Id FROM Lead WHERE Id IN (SELECT LeadId FROM CampaignMember)",
        "SELECT Id FROM Lead GROUP BY Status",
        "SELECT Id FROM Lead FOR UPDATE",
    ]:
        with pytest.raises(SoqlError) as info:
            parse(text)
        assert info.value.error_code == "MALFORMED_QUERY", text


def test_ids():
    assert to_18("00Q000000000001") == "00Q000000000001EAA"
    assert to_18("001A0000006Vm9r") == "001A0000006Vm9rIAC"
    assert normalize_id("001a0000006vm9riac") == "001A0000006Vm9rIAC"
    assert normalize_id("001A0000006Vm9rIAC") == "001A0000006Vm9rIAC"
    assert normalize_id("nope") is None
    assert normalize_id("00Q00000000000!") is None


def test_non_ascii_letter_is_a_malformed_query_not_a_crash():
    with pytest.raises(SoqlError) as info:
        parse("SELECT Id FROM Lead WHERE \u00c0 = 1")
    assert info.value.error_code == "MALFORMED_QUERY"
