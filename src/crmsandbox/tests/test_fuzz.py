"""Random input never makes the server answer 500 (only injected faults may)."""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

V = "/services/data/v59.0"
FIELDS = ["LastName", "Company", "Email", "Status", "HasOptedOutOfEmail", "NumberOfEmployees", "AnnualRevenue",
          "OwnerId", "ConvertedDate", "IsConverted", "Region__c", "External_Id__c", "Website", "Phone", "Id",
          "attributes", "Bogus__c", "lastname", "CreatedDate", "Description"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=300),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5,
)
records = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _shape_ok(r) -> bool:
    if r.status_code == 204:
        return True
    body = r.json()
    if r.status_code >= 400:
        return isinstance(body, list) and all({"message", "errorCode"} <= set(x) for x in body)
    return True


@FUZZ
@given(rec=records)
def test_create_and_update_never_500(admin_http, rec):
    r = admin_http.post(V + "/sobjects/Lead/", json=rec)
    assert r.status_code in (201, 400), r.text
    assert _shape_ok(r)
    lead = admin_http.post(V + "/sobjects/Lead/", json={"LastName": "F", "Company": "F"}).json()["id"]
    r = admin_http.patch(f"{V}/sobjects/Lead/{lead}", json=rec)
    assert r.status_code in (204, 400), r.text
    assert _shape_ok(r)


@FUZZ
@given(body=json_values)
def test_collections_and_composite_never_500(admin_http, body):
    for method, path in (("POST", "/composite/sobjects"), ("PATCH", "/composite/sobjects"),
                         ("PATCH", "/composite/sobjects/Lead/External_Id__c"), ("POST", "/composite"),
                         ("POST", "/composite/sobjects/Lead")):
        r = admin_http.request(method, V + path, content=json.dumps(body).encode(),
                               headers={"content-type": "application/json"})
        assert r.status_code in (200, 400), (method, path, r.text)


@FUZZ
@given(q=st.text(max_size=80), start=st.text(max_size=30))
def test_query_and_feeds_never_500(admin_http, q, start):
    r = admin_http.get(V + "/query", params={"q": "SELECT Id FROM Lead WHERE " + q})
    assert r.status_code in (200, 400), r.text
    r = admin_http.get(V + "/sobjects/Lead/updated/", params={"start": start, "end": start})
    assert r.status_code in (200, 400), r.text
    r = admin_http.get(V + "/sobjects/Lead/" + (quote(q, safe="") or "x"))
    assert r.status_code in (200, 400, 404), r.text
