"""Compiler tests against a real SQLite database laid out with the storage conventions."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest

from crmsandbox.soql import SoqlError, compile_query, evaluate, to_18
from crmsandbox.soql.testing import create_table, insert_rows, sample_schema

NOW = dt.datetime(2024, 3, 15, 12, 0, 0, tzinfo=dt.UTC)

U1 = to_18("005000000000001")
U2 = to_18("005000000000002")
G1 = to_18("00G000000000001")
C1 = to_18("003000000000001")
A1 = to_18("001000000000001")


def lead_id(n: int) -> str:
    return to_18(f"00Q{n:012d}")


USERS = [
    {"Id": U1, "Username": "alice", "Email": "alice@example.com", "IsActive": 1, "LastName": "Alice"},
    {"Id": U2, "Username": "bob", "Email": None, "IsActive": 0, "LastName": "Bob"},
]
LEADS = [
    {
        "Id": lead_id(1), "FirstName": "Ann", "LastName": "Zeta", "Company": "Acme", "Email": "ann@acme.com",
        "Status": "Open", "Interests": "golf;tennis", "NumberOfEmployees": 10, "AnnualRevenue": 1000, "Score": 1.5, "HasOptedOutOfEmail": 0,
        "IsConverted": 0, "ConvertedDate": None, "OwnerId": U1,
        "CreatedDate": "2024-03-15T08:00:00.000+0000", "SystemModstamp": "2024-03-15T08:00:00.000+0000",
    },
    {
        "Id": lead_id(2), "FirstName": None, "LastName": "alpha", "Company": "Beta 50% off", "Email": None,
        "Status": "Closed", "Interests": "chess", "NumberOfEmployees": None, "AnnualRevenue": None, "Score": None,
        "HasOptedOutOfEmail": 1, "IsConverted": 1, "ConvertedDate": "2024-03-14", "ConvertedContactId": C1,
        "OwnerId": U2, "CreatedDate": "2024-03-14T23:59:59.999+0000", "SystemModstamp": "2024-03-14T23:59:59.999+0000",
    },
    {
        "Id": lead_id(3), "FirstName": "Cy", "LastName": "Mu", "Company": "Gamma_Co", "Email": "CY@gamma.io",
        "Status": "Open", "Interests": "Golf", "NumberOfEmployees": 300, "AnnualRevenue": 2.5, "Score": -3.0,
        "HasOptedOutOfEmail": 0, "IsConverted": 0, "OwnerId": G1,
        "CreatedDate": "2024-03-16T00:00:00.000+0000", "SystemModstamp": "2024-03-10T00:00:00.000+0000",
    },
    {
        "Id": lead_id(4), "FirstName": "Del", "LastName": "Mu", "Company": "O'Reilly", "Email": "del@x.org",
        "Status": None, "NumberOfEmployees": 10, "AnnualRevenue": 7, "Score": 9.25, "HasOptedOutOfEmail": 0,
        "IsConverted": 0, "OwnerId": None, "CreatedDate": None, "SystemModstamp": "2024-03-01T00:00:00.000+0000",
    },
    {
        "Id": lead_id(5), "FirstName": "Eve", "LastName": "Deleted", "Company": "Gone", "Email": "eve@gone.com",
        "Status": "Open", "IsConverted": 0, "HasOptedOutOfEmail": 0, "OwnerId": U1, "IsDeleted": 1,
        "CreatedDate": "2024-03-15T09:00:00.000+0000", "SystemModstamp": "2024-03-15T09:00:00.000+0000",
    },
]  # fmt: skip
CONTACTS = [{"Id": C1, "LastName": "Alpha", "Email": "alpha@contact.com", "AccountId": A1, "OwnerId": U1}]
ACCOUNTS = [{"Id": A1, "Name": "Acme", "OwnerId": U1}]
GROUPS = [{"Id": G1, "Name": "Queue", "Type": "Queue"}]


@pytest.fixture(scope="module")
def schema():
    return sample_schema()


@pytest.fixture(scope="module")
def db(schema):
    conn = sqlite3.connect(":memory:")
    for obj in schema.objects():
        create_table(conn, obj)
    insert_rows(conn, schema.object("User"), USERS)
    insert_rows(conn, schema.object("Group"), GROUPS)
    insert_rows(conn, schema.object("Lead"), LEADS)
    insert_rows(conn, schema.object("Contact"), CONTACTS)
    insert_rows(conn, schema.object("Account"), ACCOUNTS)
    yield conn
    conn.close()


TABLES = {"sf_user": USERS, "Group": GROUPS, "Lead": LEADS, "Contact": CONTACTS, "Account": ACCOUNTS}


def run(db, schema, soql, **kw):
    kw.setdefault("now", NOW)
    cq = compile_query(soql, schema, **kw)
    rows = db.execute(cq.select_sql, cq.params).fetchall()
    records = [cq.row_to_record(r) for r in rows]
    count = db.execute(cq.count_sql, cq.count_params).fetchone()[0]
    assert count == len(records)
    expected = evaluate(soql, schema, TABLES, **kw)
    if cq.is_count:
        assert count == len(expected)
    else:
        assert records == expected
    return records


def ids(records):
    return [int(r["attributes"]["url"].rsplit("/", 1)[1][3:15]) for r in records]


def test_record_shape(db, schema):
    recs = run(db, schema, "SELECT Id, lastname, Owner.Email, owner.username, IsConverted, NumberOfEmployees, "
               "AnnualRevenue, ConvertedDate, CreatedDate FROM Lead WHERE Id = '00Q000000000001'")  # fmt: skip
    assert recs == [
        {
            "attributes": {"type": "Lead", "url": f"/services/data/v59.0/sobjects/Lead/{lead_id(1)}"},
            "Id": lead_id(1),
            "LastName": "Zeta",
            "Owner": {
                "attributes": {"type": "User", "url": f"/services/data/v59.0/sobjects/User/{U1}"},
                "Email": "alice@example.com",
                "Username": "alice",
            },
            "IsConverted": False,
            "NumberOfEmployees": 10,
            "AnnualRevenue": 1000.0,
            "ConvertedDate": None,
            "CreatedDate": "2024-03-15T08:00:00.000+0000",
        }
    ]
    assert isinstance(recs[0]["AnnualRevenue"], float)
    assert isinstance(recs[0]["NumberOfEmployees"], int)
    assert list(recs[0]) == ["attributes", "Id", "LastName", "Owner", "IsConverted", "NumberOfEmployees",
                             "AnnualRevenue", "ConvertedDate", "CreatedDate"]  # fmt: skip


def test_null_and_missing_parent(db, schema):
    recs = run(db, schema, "SELECT Owner.Email, ConvertedContact.Email FROM Lead ORDER BY Id")
    assert [r["Owner"] for r in recs][2:] == [None, None]  # a Queue owner (no User row) and no owner
    assert recs[1]["Owner"]["Email"] is None  # parent exists, field null
    assert recs[1]["ConvertedContact"]["Email"] == "alpha@contact.com"
    assert recs[0]["ConvertedContact"] is None


def test_api_version_in_urls(db, schema):
    cq = compile_query("SELECT Id FROM Lead LIMIT 1", schema, api_version="61.0")
    rec = cq.row_to_record(db.execute(cq.select_sql, cq.params).fetchone())
    assert rec["attributes"]["url"].startswith("/services/data/v61.0/sobjects/Lead/")


def test_default_order_is_insertion(db, schema):
    assert ids(run(db, schema, "SELECT Id FROM Lead")) == [1, 2, 3, 4]


def test_order_nulls(db, schema):
    assert ids(run(db, schema, "SELECT Id FROM Lead ORDER BY Score")) == [2, 3, 1, 4]
    assert ids(run(db, schema, "SELECT Id FROM Lead ORDER BY Score ASC NULLS LAST")) == [3, 1, 4, 2]
    assert ids(run(db, schema, "SELECT Id FROM Lead ORDER BY Score DESC")) == [4, 1, 3, 2]
    assert ids(run(db, schema, "SELECT Id FROM Lead ORDER BY Score DESC NULLS FIRST")) == [2, 4, 1, 3]


def test_order_multiple_keys_and_case_insensitive(db, schema):
    assert ids(run(db, schema, "SELECT Id FROM Lead ORDER BY LastName, FirstName DESC")) == [2, 4, 3, 1]
    assert ids(run(db, schema, "SELECT Id FROM Lead ORDER BY Owner.Username DESC, Id")) == [2, 1, 3, 4]


def test_limit_offset(db, schema):
    assert ids(run(db, schema, "SELECT Id FROM Lead ORDER BY Id LIMIT 2")) == [1, 2]
    assert ids(run(db, schema, "SELECT Id FROM Lead ORDER BY Id LIMIT 2 OFFSET 1")) == [2, 3]
    assert ids(run(db, schema, "SELECT Id FROM Lead ORDER BY Id OFFSET 3")) == [4]
    assert ids(run(db, schema, "SELECT Id FROM Lead ORDER BY Id LIMIT 0")) == []


def test_string_equality_is_case_insensitive(db, schema):
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Email = 'cy@GAMMA.io'")) == [3]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Company = 'o\\'reilly'")) == [4]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Status IN ('OPEN')")) == [1, 3]


def test_not_equal_includes_nulls(db, schema):
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Status != 'Open'")) == [2, 4]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE NOT Status = 'Open'")) == [2, 4]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Status NOT IN ('Open')")) == [2, 4]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Status NOT IN ('Open', null)")) == [2]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Status IN ('Closed', null)")) == [2, 4]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE NOT Score > 0")) == [2, 3]


def test_null_comparisons(db, schema):
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Email = null")) == [2]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Email != null")) == [1, 3, 4]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE NOT Email = null")) == [1, 3, 4]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE OwnerId = ''")) == [4]


def test_numbers_and_booleans(db, schema):
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE NumberOfEmployees >= 10 AND Score < 5")) == [1, 3]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE AnnualRevenue IN (1000, 7)")) == [1, 4]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE IsConverted = true")) == [2]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE HasOptedOutOfEmail != TRUE")) == [1, 3, 4]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Score = -3")) == [3]


def test_like(db, schema):
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Company LIKE 'a%'")) == [1]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Email LIKE '%GAMMA%'")) == [3]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE LastName LIKE 'M_'")) == [3, 4]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Company LIKE '%50\\%%'")) == [2]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Company LIKE 'Gamma\\_%'")) == [3]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Company LIKE 'Beta_50%'")) == [2]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE NOT Email LIKE '%.com'")) == [2, 3, 4]


def test_includes_excludes(db, schema):
    q = "SELECT Id FROM Lead WHERE Interests "
    assert ids(run(db, schema, q + "INCLUDES ('golf')")) == [1, 3]
    assert ids(run(db, schema, q + "INCLUDES ('GOLF;tennis')")) == [1]
    assert ids(run(db, schema, q + "INCLUDES ('golf;tennis', 'chess')")) == [1, 2]
    assert ids(run(db, schema, q + "EXCLUDES ('golf')")) == [2, 4]
    assert ids(run(db, schema, q + "INCLUDES ('gol')")) == []
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE NOT Interests INCLUDES ('golf')")) == [2, 4]


def test_and_or_not(db, schema):
    soql = "SELECT Id FROM Lead WHERE (Status = 'Open' OR Status = null) AND (NOT (LastName = 'mu' AND Score < 0))"
    assert ids(run(db, schema, soql)) == [1, 4]


def test_parent_field_in_where(db, schema):
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Owner.Email LIKE 'alice%'")) == [1]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Owner.Email = null")) == [2, 3, 4]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Owner.IsActive = false")) == [2]


def test_lead_object_name_prefix(db, schema):
    recs = run(db, schema, "SELECT Lead.Email FROM Lead WHERE Lead.Id = '00Q000000000003'")
    assert recs[0]["Email"] == "CY@gamma.io"


def test_count(db, schema):
    for soql, n in [
        ("SELECT COUNT() FROM Lead", 4),
        ("SELECT COUNT() FROM Lead WHERE Status = 'Open'", 2),
        ("SELECT COUNT() FROM Lead LIMIT 3", 3),
        ("SELECT COUNT() FROM Lead WHERE Owner.Username = 'alice'", 1),
    ]:
        cq = compile_query(soql, schema)
        assert cq.is_count
        assert db.execute(cq.count_sql, cq.count_params).fetchone()[0] == n, soql
    cq = compile_query("SELECT Id FROM Lead LIMIT 10 OFFSET 3", schema)
    assert db.execute(cq.count_sql, cq.count_params).fetchone()[0] == 1


def test_ids_15_and_18_char(db, schema):
    id15 = "00Q000000000002"
    assert ids(run(db, schema, f"SELECT Id FROM Lead WHERE Id = '{id15}'")) == [2]
    assert ids(run(db, schema, f"SELECT Id FROM Lead WHERE Id = '{lead_id(2)}'")) == [2]
    assert ids(run(db, schema, f"SELECT Id FROM Lead WHERE Id = '{lead_id(2).lower()}'")) == [2]
    assert ids(run(db, schema, f"SELECT Id FROM Lead WHERE Id IN ('{id15}', '{lead_id(3)}')")) == [2, 3]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE OwnerId = '005000000000001'")) == [1]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE OwnerId != '005000000000001'")) == [2, 3, 4]
    # a 15-char id differing only in case is another record
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE Id = '00q000000000002'")) == []


def test_include_deleted(db, schema):
    assert ids(run(db, schema, "SELECT Id FROM Lead", include_deleted=True)) == [1, 2, 3, 4, 5]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE IsDeleted = true", include_deleted=True)) == [5]


def test_owner_filter(db, schema):
    assert ids(run(db, schema, "SELECT Id FROM Lead", owner_id=U1)) == [1]
    assert ids(run(db, schema, "SELECT Id FROM Lead", owner_id="005000000000001")) == [1]
    assert ids(run(db, schema, "SELECT Id FROM Lead", owner_id=U1, include_deleted=True)) == [1, 5]
    # objects without an owner are not filtered
    cq = compile_query("SELECT Id FROM User", schema, owner_id=U1)
    assert len(db.execute(cq.select_sql, cq.params).fetchall()) == 2


def test_datetime_literals(db, schema):
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE CreatedDate > 2024-03-15T00:00:00Z")) == [1, 3]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE CreatedDate >= 2024-03-14T23:59:59.999Z")) == [
        1,
        2,
        3,
    ]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE CreatedDate < 2024-03-15T09:00:01+01:00")) == [1, 2]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE SystemModstamp = 2024-03-01T00:00:00.000Z")) == [4]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE ConvertedDate = 2024-03-14")) == [2]
    assert ids(run(db, schema, "SELECT Id FROM Lead WHERE ConvertedDate > 2024-03-13")) == [2]


def test_date_constants_with_injected_now(db, schema):
    q = "SELECT Id FROM Lead WHERE "
    assert ids(run(db, schema, q + "CreatedDate = TODAY")) == [1]
    assert ids(run(db, schema, q + "CreatedDate = YESTERDAY")) == [2]
    assert ids(run(db, schema, q + "CreatedDate = TOMORROW")) == [3]
    assert ids(run(db, schema, q + "CreatedDate > TODAY")) == [3]
    assert ids(run(db, schema, q + "CreatedDate >= TODAY")) == [1, 3]
    assert ids(run(db, schema, q + "CreatedDate < TODAY")) == [2]
    assert ids(run(db, schema, q + "CreatedDate <= TODAY")) == [1, 2]
    assert ids(run(db, schema, q + "CreatedDate != TODAY")) == [2, 3, 4]
    assert ids(run(db, schema, q + "SystemModstamp = LAST_N_DAYS:5")) == [1, 2, 3]
    assert ids(run(db, schema, q + "SystemModstamp < LAST_N_DAYS:5")) == [4]
    assert ids(run(db, schema, q + "CreatedDate = NEXT_N_DAYS:1")) == [3]
    assert ids(run(db, schema, q + "ConvertedDate = YESTERDAY")) == [2]
    assert ids(run(db, schema, q + "ConvertedDate = THIS_MONTH")) == [2]
    assert ids(run(db, schema, q + "NOT ConvertedDate = THIS_MONTH")) == [1, 3, 4]
    # another "now" moves the window
    later = dt.datetime(2024, 3, 16, 0, 0, 1, tzinfo=dt.UTC)
    assert ids(run(db, schema, q + "CreatedDate = TODAY", now=later)) == [3]
    # a non-UTC now is converted to UTC first
    tz = dt.timezone(dt.timedelta(hours=-5))
    assert ids(
        run(db, schema, q + "CreatedDate = TODAY", now=dt.datetime(2024, 3, 15, 20, 0, tzinfo=tz))
    ) == [3]


def test_sql_is_indexable(db, schema):
    cq = compile_query("SELECT Id FROM Lead WHERE SystemModstamp > 2024-01-01T00:00:00Z ORDER BY SystemModstamp",
                       schema)  # fmt: skip
    assert '"t0"."SystemModstamp" > ?' in cq.select_sql
    assert cq.params == ["2024-01-01T00:00:00.000+0000"]
    assert (
        "LIKE ? ESCAPE '\\'" in compile_query("SELECT Id FROM Lead WHERE Email LIKE 'a%'", schema).select_sql
    )


@pytest.mark.parametrize(
    ("soql", "code", "detail"),
    [
        ("SELECT Id FROM Foo", "INVALID_TYPE", "sObject type 'Foo' is not supported."),
        (
            "SELECT Bogus FROM Contact",
            "INVALID_FIELD",
            "No such column 'Bogus' on entity 'Contact'. If you are "
            "attempting to use a custom field, be sure to append the '__c' after the custom field name. Please "
            "reference your WSDL or the describe call for the appropriate names.",
        ),
        (
            "SELECT Id FROM Lead WHERE Bogus = 'x'",
            "INVALID_FIELD",
            "No such column 'Bogus' on entity 'Lead'.",
        ),
        ("SELECT Id FROM Lead ORDER BY Bogus", "INVALID_FIELD", "No such column 'Bogus' on entity 'Lead'."),
        ("SELECT Owner.Bogus FROM Lead", "INVALID_FIELD", "No such column 'Bogus' on entity 'User'."),
        (
            "SELECT Foo.Email FROM Lead",
            "INVALID_FIELD",
            "Didn't understand relationship 'Foo' in field path.",
        ),
        ("SELECT Owner.Manager.Email FROM Lead", "INVALID_FIELD", "Didn't understand relationship"),
        ("SELECT Id FROM Lead WHERE LastName = 5", "INVALID_FIELD", "must be of type string"),
        ("SELECT Id FROM Lead WHERE Score = '5'", "INVALID_FIELD", "must be of type double"),
        ("SELECT Id FROM Lead WHERE IsConverted = 'true'", "INVALID_FIELD", "must be of type boolean"),
        ("SELECT Id FROM Lead WHERE CreatedDate > 2024-01-01", "INVALID_FIELD", "must be of type dateTime"),
        (
            "SELECT Id FROM Lead WHERE ConvertedDate > 2024-01-01T00:00:00Z",
            "INVALID_FIELD",
            "must be of type date",
        ),
        ("SELECT Id FROM Lead WHERE Email = TODAY", "INVALID_FIELD", "must be of type string"),
        ("SELECT Id FROM Lead WHERE Id = 'abc'", "INVALID_QUERY_FILTER_OPERATOR", "invalid ID field: abc"),
        ("SELECT Id FROM Lead WHERE Id LIKE '00Q%'", "INVALID_QUERY_FILTER_OPERATOR", "invalid operator"),
        ("SELECT Id FROM Lead WHERE Score < null", "INVALID_QUERY_FILTER_OPERATOR", "invalid operator"),
        ("SELECT Id, id FROM Lead", "MALFORMED_QUERY", "duplicate field selected: id"),
        ("SELECT Id FROM Lead WHERE Email INCLUDES ('a')", "INVALID_QUERY_FILTER_OPERATOR", "multipicklist"),
    ],
)
def test_compile_errors(schema, soql, code, detail):
    with pytest.raises(SoqlError) as info:
        compile_query(soql, schema)
    assert info.value.error_code == code
    assert detail in info.value.detail
    assert "ERROR at Row:1:Column:" in info.value.message


def test_page_sql_keyset(db, schema):
    for soql in [
        "SELECT Id, LastName FROM Lead",
        "SELECT Id FROM Lead ORDER BY LastName, FirstName DESC",
        "SELECT Id FROM Lead ORDER BY Score DESC NULLS FIRST",
        "SELECT Id FROM Lead ORDER BY Score ASC NULLS LAST, Id",
        "SELECT Id FROM Lead ORDER BY Owner.Email",
        "SELECT Id FROM Lead ORDER BY Status NULLS LAST LIMIT 3 OFFSET 1",
    ]:
        cq = compile_query(soql, schema, include_deleted=True)
        everything = [cq.row_to_record(r) for r in db.execute(cq.select_sql, cq.params)]
        for page_size in (1, 2, 3):
            got: list = []
            after = None
            while True:
                sql, params = cq.page_sql(after=after, page_size=page_size, already_returned=len(got))
                rows = db.execute(sql, params).fetchall()
                got.extend(cq.row_to_record(r) for r in rows)
                if len(rows) < page_size:
                    break
                after = cq.sort_key(rows[-1])
            assert got == everything, (soql, page_size)
