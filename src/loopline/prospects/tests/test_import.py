"""CSV import: parsing, mapping, matching, options, bad input (each rejected with row + field + reason), batches."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from loopline.accounts import services as account_services
from loopline.platform import events
from loopline.platform.models import Job
from loopline.prospects import importing, services
from loopline.prospects.models import Activity, ActivityType, CustomField, Prospect


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def dup_bu(db):
    return account_services.create_business_unit("Dup Corp", allow_duplicate_emails=True)


@pytest.fixture
def custom_fields(bu):
    CustomField.objects.create(bu=bu, name="Seats", api_name="seats", type="number", min_value=0, max_value=1000)
    CustomField.objects.create(bu=bu, name="Renewal", api_name="renewal", type="date")
    CustomField.objects.create(bu=bu, name="Partner", api_name="partner", type="checkbox")
    CustomField.objects.create(bu=bu, name="Plan", api_name="plan", type="dropdown", options=["Free", "Pro"])


def write(tmp_path, text: str | bytes, name: str = "in.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def run(bu, tmp_path, text, **kwargs):
    options = kwargs.pop("options", None) or importing.ImportOptions(**{
        k: kwargs.pop(k) for k in ("match", "update_existing", "undelete", "overwrite_with_blanks", "timeline_entry",
                  "batch_size")
        if k in kwargs})
    return importing.run_import(bu, write(tmp_path, text), options=options, **kwargs)


def rejects(result, media):
    if not result.rejects_path:
        return []
    with open(media / result.rejects_path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def test_creates_prospects_with_auto_mapping_and_change_times(bu, tmp_path, media):
    result = run(bu, tmp_path, "E-mail,First Name,Company Name,Number of employees\n"
                               "Ada@Example.com,Ada,Analytical,12\nbob@example.com,Bob,,\n")
    assert (result.rows, result.created, result.rejected) == (2, 2, 0)
    ada = Prospect.objects.get(bu=bu, email="ada@example.com")
    assert (ada.first_name, ada.company, ada.employees, ada.email_key) == ("Ada", "Analytical", 12, "ada@example.com")
    assert {"email", "first_name", "company", "employees"} <= set(ada.field_changed_at)
    assert "company" not in Prospect.objects.get(email="bob@example.com").field_changed_at
    assert not Activity.objects.filter(prospect=ada).exists()  # no timeline entry unless asked for


def test_timeline_entry_option(bu, tmp_path):
    services.create_prospect(bu, {"email": "old@example.com"})
    run(bu, tmp_path, "email,city\nold@example.com,Rome\nnew@example.com,Oslo\n", timeline_entry=True)
    titles = set(Activity.objects.filter(type=ActivityType.IMPORTED).values_list("prospect__email", "title"))
    assert titles == {("old@example.com", "Imported from in.csv"), ("new@example.com", "Imported from in.csv")}


def test_suggest_mapping_by_name_label_alias_case_and_space_insensitive(bu, custom_fields):
    specs = importing.field_specs(bu.pk)
    header = ["EMAIL", "first_name", "  Last   Name ", "Postal Code", "seats", "Plan", "Salesforce Lead Id", "Shoe"]
    assert importing.suggest_mapping(header, specs) == [
        "email", "first_name", "last_name", "zip", "custom.seats", "custom.plan", "crm_lead_id", None]


def test_unknown_columns_are_reported_and_ignored(bu, tmp_path):
    result = run(bu, tmp_path, "email,Shoe size\nada@example.com,42\n")
    assert result.created == 1
    assert result.ignored_columns == ["Shoe size"]
    assert any("Shoe size" in n for n in result.notes)


def test_explicit_mapping_overrides_and_errors(bu, tmp_path):
    specs = importing.field_specs(bu.pk)
    assert importing.build_mapping(["Mail", "Org"], specs, {"Mail": "email", "Org": "Company"}) == ["email", "company"]
    assert importing.build_mapping(["email", "title"], specs, {"title": ""}) == ["email", None]
    with pytest.raises(importing.ImportSetupError, match="no column named 'Nope'"):
        importing.build_mapping(["email"], specs, {"Nope": "email"})
    with pytest.raises(importing.ImportSetupError, match="not a prospect field"):
        importing.build_mapping(["email", "x"], specs, {"x": "shoe_size"})
    with pytest.raises(importing.ImportSetupError, match="Map a column to Email"):
        run(bu, tmp_path, "name\nAda\n")


@pytest.mark.usefixtures("custom_fields")
@pytest.mark.parametrize(
    ("header", "value", "column", "reason"),
    [
        ("email", "not-an-email", "email", "not a valid email address"),
        ("city", "x" * 41, "city", "at most 40"),
        ("seats", "lots", "seats", "not a number"),
        ("seats", "5000", "seats", "at most 1000"),
        ("renewal", "31/12/2026", "renewal", "not a date"),
        ("partner", "perhaps", "partner", "not yes/no"),
        ("plan", "Enterprise", "plan", "not among the choices"),
        ("employees", "-3", "employees", "whole number"),
    ],
)
def test_bad_values_are_rejected_naming_row_and_column(bu, tmp_path, media, header, value, column, reason):
    cols = "email" if header == "email" else f"email,{header}"
    rows = f"{value}" if header == "email" else f"bad@example.com,{value}"
    result = run(bu, tmp_path, f"{cols}\ngood@example.com{',' if header != 'email' else ''}\n{rows}\n")
    assert (result.created, result.rejected) == (1, 1)
    [reject] = rejects(result, media)
    assert reject["Row"] == "3"
    assert reject["Column"] == column
    assert reason in reject["Reason"]
    assert result.errors_sample[0]["row"] == 3


def test_custom_field_values_are_stored_cleaned(bu, tmp_path, custom_fields):
    run(bu, tmp_path, "email,seats,renewal,partner,plan\nada@example.com,12,2026-12-31,yes,Pro\n")
    ada = Prospect.objects.get(email="ada@example.com")
    assert ada.custom == {"seats": 12, "renewal": "2026-12-31", "partner": True, "plan": "Pro"}
    assert "custom.seats" in ada.field_changed_at


def test_duplicate_email_in_file_unique_bu_first_row_wins(bu, tmp_path, media):
    result = run(bu, tmp_path, "email,first_name\nada@example.com,First\nADA@example.com,Second\n")
    assert (result.created, result.rejected) == (1, 1)
    assert Prospect.objects.get(email="ada@example.com").first_name == "First"
    [reject] = rejects(result, media)
    assert (reject["Row"], reject["Column"]) == ("3", "email")
    assert "row 2 of this file" in reject["Reason"]


def test_duplicate_email_across_batches_is_also_rejected(bu, tmp_path):
    result = run(bu, tmp_path, "email\na@x.test\nb@x.test\na@x.test\n", batch_size=1)
    assert (result.created, result.rejected) == (2, 1)


def test_duplicate_emails_allowed_bu_creates_both(dup_bu, tmp_path):
    result = run(dup_bu, tmp_path, "email,first_name\nada@example.com,One\nada@example.com,Two\n")
    assert (result.created, result.rejected) == (2, 0)
    assert Prospect.objects.filter(bu=dup_bu, email="ada@example.com").count() == 2
    assert set(Prospect.objects.filter(bu=dup_bu).values_list("email_key", flat=True)) == {None}


def test_updates_existing_by_email_and_keeps_other_values(bu, tmp_path):
    ada = services.create_prospect(bu, {"email": "ada@example.com", "company": "Old", "city": "Paris"})
    stamp = ada.field_changed_at["city"]
    result = run(bu, tmp_path, "email,company,city\nada@example.com,New,\n")
    assert (result.updated, result.created) == (1, 0)
    ada.refresh_from_db()
    assert (ada.company, ada.city) == ("New", "Paris")  # blanks don't overwrite by default
    assert ada.field_changed_at["city"] == stamp and ada.field_changed_at["company"] > stamp


def test_overwrite_with_blanks_and_unchanged(bu, tmp_path):
    services.create_prospect(bu, {"email": "ada@example.com", "city": "Paris"})
    assert run(bu, tmp_path, "email,city\nada@example.com,Paris\n").unchanged == 1
    run(bu, tmp_path, "email,city\nada@example.com,\n", overwrite_with_blanks=True)
    assert Prospect.objects.get(email="ada@example.com").city == ""


def test_no_update_skips_existing(bu, tmp_path):
    services.create_prospect(bu, {"email": "ada@example.com", "company": "Old"})
    result = run(bu, tmp_path, "email,company\nada@example.com,New\nnew@example.com,N\n", update_existing=False)
    assert (result.skipped, result.created, result.updated) == (1, 1, 0)
    assert Prospect.objects.get(email="ada@example.com").company == "Old"


def test_recycle_bin_match_rejected_unless_undelete(bu, tmp_path, media):
    ada = services.create_prospect(bu, {"email": "ada@example.com"})
    services.move_to_recycle_bin(ada)
    result = run(bu, tmp_path, "email,company\nada@example.com,Back\n")
    assert result.rejected == 1 and "recycle bin" in rejects(result, media)[0]["Reason"]
    result = run(bu, tmp_path, "email,company\nada@example.com,Back\n", undelete=True)
    assert (result.updated, result.undeleted) == (1, 1)
    ada.refresh_from_db()
    assert (ada.is_deleted, ada.deleted_at, ada.company) == (False, None, "Back")


def test_crm_id_matching(dup_bu, tmp_path, media):
    lead = services.create_prospect(dup_bu, {"email": "ada@example.com"}, extra={"crm_lead_id": "00Q000000000001AAA"})
    other = services.create_prospect(dup_bu, {"email": "ada@example.com"})
    result = run(dup_bu, tmp_path, "Lead ID,email,company\n00Q000000000001AAA,ada@example.com,Matched\n"
                                   "00Q000000000002AAA,ada@example.com,New one\nnot-an-id,x@example.com,Bad\n")
    assert (result.updated, result.created, result.rejected) == (1, 1, 1)
    lead.refresh_from_db(), other.refresh_from_db()
    assert (lead.company, other.company) == ("Matched", "")
    assert Prospect.objects.get(crm_lead_id="00Q000000000002AAA").company == "New one"
    assert "not a CRM id" in rejects(result, media)[0]["Reason"]


def test_crm_match_in_unique_bu_falls_back_to_email_and_guards_email_clash(bu, tmp_path, media):
    services.create_prospect(bu, {"email": "ada@example.com"})
    services.create_prospect(bu, {"email": "bob@example.com"}, extra={"crm_contact_id": "003000000000001AAA"})
    result = run(bu, tmp_path, "crm_contact_id,email,company\n,ada@example.com,ByEmail\n"
                               "003000000000001AAA,ada@example.com,Clash\n", match="crm_id")
    assert (result.updated, result.rejected) == (1, 1)
    assert Prospect.objects.get(email="ada@example.com").company == "ByEmail"
    assert Prospect.objects.get(crm_contact_id="003000000000001AAA").email == "bob@example.com"


def test_accepted_rows_survive_a_later_bad_batch(bu, tmp_path):
    text = "email\na@x.test\nb@x.test\nbad\nc@x.test\nd@x.test\n"
    result = run(bu, tmp_path, text, batch_size=2)
    assert (result.created, result.rejected) == (4, 1)

    # A batch that fails outright (here: an event handler raising inside the batch's transaction) rolls back
    # alone; earlier batches stay committed and the job says how far it got.
    Prospect.objects.all().delete()
    calls = {"n": 0}

    def failing_handler(event):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")

    events.subscribe(events.ProspectsBulkChanged, failing_handler)
    job = importing.create_job(bu, importing.save_upload([text.encode()], "x.csv"), "x.csv")
    importing.configure_job(job, ["email"], importing.ImportOptions(batch_size=2))
    try:
        job = importing.run_job(job.pk)
    finally:
        events.unsubscribe(events.ProspectsBulkChanged, failing_handler)
    assert job.status == Job.Status.FAILED and "disk full" in job.error and "kept" in job.error
    assert set(Prospect.objects.values_list("email", flat=True)) == {"a@x.test", "b@x.test"}
    assert job.result["incomplete"] is True


def test_bulk_event_published(bu, tmp_path):
    seen = []
    events.subscribe(events.ProspectsBulkChanged, seen.append)
    try:
        services.create_prospect(bu, {"email": "old@example.com"})
        run(bu, tmp_path, "email,city\nold@example.com,Rome\nnew@example.com,Oslo\n")
    finally:
        events.unsubscribe(events.ProspectsBulkChanged, seen.append)
    [event] = seen
    assert event.bu_id == bu.pk and event.source == "import"
    assert len(event.prospect_ids) == 2 and len(event.created_ids) == 1


def test_required_custom_field_applies_to_new_prospects_only(bu, tmp_path, media):
    services.create_prospect(bu, {"email": "old@example.com"})
    CustomField.objects.create(bu=bu, name="Region", api_name="region", type="text", required=True)
    result = run(bu, tmp_path, "email,city\nold@example.com,Rome\nnew@example.com,Oslo\n")
    assert (result.updated, result.rejected) == (1, 1)
    assert "Region is required" in rejects(result, media)[0]["Reason"]


# --- Broken files --------------------------------------------------------------------------------------------------


def test_empty_file_and_header_only(bu, tmp_path):
    with pytest.raises(importing.ImportSetupError, match="empty"):
        run(bu, tmp_path, "")
    with pytest.raises(importing.ImportSetupError, match="empty"):
        run(bu, tmp_path, "\n\n")
    result = run(bu, tmp_path, "email,first_name\n")
    assert result.rows == 0 and any("no prospect rows" in n for n in result.notes)


def test_utf8_bom_semicolons_crlf_and_utf16(bu, tmp_path):
    result = run(bu, tmp_path, "\ufeffEmail;First name\r\nzoe@example.com;Zoë\r\n".encode())
    assert result.created == 1 and Prospect.objects.get(email="zoe@example.com").first_name == "Zoë"
    result = run(bu, tmp_path, "Email\tFirst name\nyann@example.com\tYannick\n".encode("utf-16"))
    assert result.created == 1 and Prospect.objects.get(email="yann@example.com").first_name == "Yannick"


def test_broken_encoding_rejects_the_row_and_keeps_the_others(bu, tmp_path, media):
    data = b"email,first_name\na@x.test,Ann\n" + "b@x.test,Zo\xeb\n".encode("latin-1") + b"c@x.test,Cy\n"
    result = run(bu, tmp_path, data)
    assert (result.created, result.rejected) == (2, 1)
    [reject] = rejects(result, media)
    assert reject["Row"] == "3" and "not valid UTF-8" in reject["Reason"]


def test_broken_quoting(bu, tmp_path, media):
    result = run(bu, tmp_path, 'email,company\na@x.test,"Acme" Inc\nb@x.test,"Fine, Inc"\nc@x.test,"never closed\nd@x.test,x\n')
    assert result.created == 1  # b; c and d are swallowed by the unterminated quote
    reasons = [r["Reason"] for r in rejects(result, media)]
    assert any("quote inside a value must be doubled" in r for r in reasons)
    assert any("never closed" in r for r in reasons)


def test_too_many_values_and_huge_cells(bu, tmp_path, media):
    huge = "x" * (importing.MAX_FIELD_CHARS + 10)
    result = run(bu, tmp_path, f"email,city\na@x.test,Rome,extra\nb@x.test,{huge}\nc@x.test,Oslo\n")
    assert result.created == 1
    reasons = [r["Reason"] for r in rejects(result, media)]
    assert any("3 values but the header has 2" in r for r in reasons)
    assert any("too long" in r or "characters" in r for r in reasons)


def test_rejects_report_is_csv_injection_safe_and_keeps_original_values(bu, tmp_path, media):
    result = run(bu, tmp_path, "email,company\n=HYPERLINK(1),Evil\n")
    [reject] = rejects(result, media)
    assert reject["email"] == "'=HYPERLINK(1)" and reject["company"] == "Evil"


def test_formula_escaped_cells_are_read_back_without_the_quote(bu, tmp_path):
    run(bu, tmp_path, "email,phone\na@x.test,'+1 555 0100\n")
    assert Prospect.objects.get(email="a@x.test").phone == "+1 555 0100"


def test_scoped_access_cannot_match_invisible_prospects(bu, tmp_path, sales_access, media):
    services.create_prospect(bu, {"email": "hidden@example.com"})
    result = run(bu, tmp_path, "email,company\nhidden@example.com,Changed\n", access=sales_access)
    assert result.rejected == 1 and "already exists" in rejects(result, media)[0]["Reason"]
    assert Prospect.objects.get(email="hidden@example.com").company == ""


# --- CLI -------------------------------------------------------------------------------------------------------------


def test_import_command(bu, tmp_path):
    path = write(tmp_path, "Mail,Org\nada@example.com,Acme\nbad,Nope\n")
    out, err = io.StringIO(), io.StringIO()
    call_command("import", str(path), bu=bu.slug, map=["Mail=email", "Org=company"], no_progress=True,
                 stdout=out, stderr=err)
    text = out.getvalue()
    assert "created 1" in text and "rejected 1" in text and "rejected rows with reasons:" in text
    assert Prospect.objects.get(email="ada@example.com").company == "Acme"
    job = Job.objects.get(kind="import")
    assert job.status == Job.Status.SUCCEEDED and (job.done, job.failed, job.total) == (1, 1, 2)


def test_import_command_errors(bu, tmp_path):
    with pytest.raises(CommandError, match="No business unit"):
        call_command("import", str(write(tmp_path, "email\n")), bu="nope")
    with pytest.raises(CommandError, match="Map a column to Email"):
        call_command("import", str(write(tmp_path, "name\nx\n")), bu=bu.slug, no_progress=True)


def test_fast_insert_raises_django_integrity_error_and_import_falls_back(bu, tmp_path, monkeypatch):
    from django.db import IntegrityError, transaction

    services.create_prospect(bu, {"email": "taken@example.com"})
    with pytest.raises(IntegrityError), transaction.atomic():
        services._bulk_insert(Prospect, [Prospect(bu=bu, email="taken@example.com", email_key="taken@example.com")])
    # When the multi-row insert fails (a concurrent writer took an email), rows are saved one by one.
    real_insert = services._bulk_insert
    calls = {"n": 0}

    def failing_once(model, objs):
        calls["n"] += 1
        if model is Prospect and calls["n"] == 1:
            real_insert(model, objs[:1])  # half done, then the failure: the savepoint undoes it
            raise IntegrityError("duplicate key value violates unique constraint")
        return real_insert(model, objs)

    monkeypatch.setattr(services, "_bulk_insert", failing_once)
    result = run(bu, tmp_path, "email\nrace@example.com\nfine@example.com\n")
    assert (result.created, result.rejected) == (2, 0)
    assert Prospect.objects.filter(email__in=["race@example.com", "fine@example.com"]).count() == 2
