"""CSV export: standard + custom fields, tags, CSV-injection escaping, the export view's filters and access."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.management import call_command
from django.urls import reverse

from loopline.conftest import PASSWORD
from loopline.prospects import exporting, services
from loopline.prospects.models import CustomField, Prospect


@pytest.fixture
def data(bu, other_bu):
    CustomField.objects.create(bu=bu, name="Seats", api_name="seats", type="number")
    CustomField.objects.create(bu=bu, name="Company", api_name="company_custom", type="text")
    ada = services.create_prospect(bu, {"email": "ada@example.com", "first_name": "Ada", "seats": "12",
                                        "company_custom": "=cmd|' /C calc'!A0", "annual_revenue": "-5"})
    services.add_tags(ada, ["VIP", "Beta"])
    services.create_prospect(bu, {"email": "bob@example.com", "company": "+Bob Corp", "last_name": "@home"})
    services.create_prospect(other_bu, {"email": "other@example.com"})
    return ada


def parse(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))


def test_export_rows_custom_fields_tags_and_escaping(bu, data):
    qs = Prospect.objects.filter(bu=bu).order_by("id")
    text = "".join(exporting.iter_csv(qs, exporting.export_columns(bu.pk, include_tags=True)))
    assert text.startswith("\ufeff")
    ada, bob = parse(text)
    assert ada["Email"] == "ada@example.com" and ada["Seats"] == "12" and ada["Tags"] == "Beta; VIP"
    assert ada["company_custom"] == "'=cmd|' /C calc'!A0"  # label clashes with a standard field -> api name
    assert ada["Annual revenue"] == "-5.00"  # numbers are not escaped
    assert bob["Company"] == "'+Bob Corp" and bob["Last name"] == "'@home"
    assert ada["Opted out"] == "no" and ada["Prospect id"] == str(data.pk)


def test_export_round_trips_through_import(bu, data, tmp_path, settings):
    from loopline.prospects import importing

    settings.MEDIA_ROOT = tmp_path
    path = tmp_path / "out.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as fh:
        assert exporting.write_csv(Prospect.objects.filter(bu=bu), fh, bu_id=bu.pk) == 2
    result = importing.run_import(bu, path)
    assert result.rejected == 0 and result.unchanged == 2
    assert Prospect.objects.get(email="bob@example.com").company == "+Bob Corp"


def test_safe_cell():
    assert [exporting.safe_cell(v) for v in ("=1", "+1", "-1", "@a", "\tx", "ok", 5, -5)] == [
        "'=1", "'+1", "'-1", "'@a", "'\tx", "ok", 5, -5]


def test_export_view_uses_list_filters_and_scoping(client, bu, data, marketing_user):
    client.login(username=marketing_user.email, password=PASSWORD)
    response = client.get(reverse("prospects:export"), {"q": "bob@"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = parse(b"".join(response.streaming_content).decode())
    assert [r["Email"] for r in rows] == ["bob@example.com"]
    response = client.get(reverse("prospects:export"), {"tags": "1"})
    rows = parse(b"".join(response.streaming_content).decode())
    assert {r["Email"] for r in rows} == {"ada@example.com", "bob@example.com"}  # never another BU's


def test_sales_cannot_export(client, bu, data, sales_user):
    client.login(username=sales_user.email, password=PASSWORD)
    assert client.get(reverse("prospects:export")).status_code == 403


def test_export_command(bu, data, tmp_path):
    out = tmp_path / "x.csv"
    err = io.StringIO()
    call_command("export", bu=bu.slug, out=str(out), filter=["q=ada@"], stderr=err)
    rows = parse(out.read_text(encoding="utf-8-sig"))
    assert [r["Email"] for r in rows] == ["ada@example.com"] and "Exported 1" in err.getvalue()
