import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from loopline.conftest import PASSWORD
from loopline.forms.models import Form, FormHandler, LandingPage
from loopline.prospects.models import Activity, ActivityType, Visitor
from loopline.tracking.models import CustomRedirect, TrackedFile

pytestmark = pytest.mark.django_db


@pytest.fixture
def ui(client, marketing_user):
    client.login(username=marketing_user.email, password=PASSWORD)
    return client


def test_tracking_settings_shows_snippet_and_saves(ui, admin_user, bu):
    r = ui.get("/tracking/")
    assert r.status_code == 200 and "tracker.js" in r.content.decode()
    r = ui.post("/tracking/", {"require_consent": "on", "show_banner": "on", "banner_text": "OK?",
                               "allowed_origins": "https://www.acme.test\nnot an origin"})
    assert r.status_code == 403  # marketing cannot change BU settings
    from django.test import Client

    admin = Client()
    admin.login(username=admin_user.email, password=PASSWORD)
    r = admin.post("/tracking/", {"require_consent": "on", "banner_text": "OK?",
                                  "allowed_origins": "https://www.acme.test\nnot an origin"})
    assert r.status_code == 200 and "is not an origin" in r.content.decode()
    r = admin.post("/tracking/", {"require_consent": "on", "banner_text": "OK?",
                                  "allowed_origins": "https://www.acme.test/\n"})
    assert r.status_code == 302
    assert bu.tracker.allowed_origins == ["https://www.acme.test"] and bu.tracker.require_consent


def test_form_builder_round_trip(ui, bu):
    r = ui.get("/forms/new/")
    assert r.status_code == 200
    r = ui.post("/forms/new/", {
        "name": "Demo", "submit_label": "Send", "thank_you_content": "Thanks",
        "field-0-prospect_field": "email", "field-0-position": "1",
        "field-1-prospect_field": "company", "field-1-position": "0", "field-1-progressive": "1",
        "field-2-prospect_field": "source", "field-2-kind": "hidden", "field-2-default_value": "web",
        "action-0-type": "add_tag", "action-0-arg": "demo",
        "action-1-type": "adjust_score", "action-1-arg": "7"})
    assert r.status_code == 302, r.content.decode()[:2000]
    form = Form.objects.get(bu=bu, name="Demo")
    assert [f.prospect_field for f in form.fields.all()] == ["company", "email", "source"]
    assert form.actions == [{"type": "add_tag", "tag": "demo"}, {"type": "adjust_score", "points": 7}]
    r = ui.get(f"/forms/{form.pk}/")
    assert "embed.js" in r.content.decode()
    r = ui.post(f"/forms/{form.pk}/", {"name": "Demo", "submit_label": "Send", "field-0-prospect_field": "company",
                                       "action-0-type": "adjust_score", "action-0-arg": "lots"})
    assert r.status_code == 200 and "points must be a whole number" in r.content.decode()
    r = ui.post(f"/forms/{form.pk}/", {"name": "Demo", "submit_label": "Send", "field-0-prospect_field": "company"})
    assert r.status_code == 200 and "A form needs an email field" in r.content.decode()
    assert ui.get("/forms/").status_code == 200


def test_handler_page_redirect_file_editors(ui, bu, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    r = ui.post("/forms/handlers/new/", {"name": "H", "success_url": "https://acme.test/ok",
                                          "mappings_text": "your-email = email *\nname = first_name"})
    assert r.status_code == 302
    assert FormHandler.objects.get(bu=bu).mappings[0] == {"name": "your-email", "field": "email", "required": True}
    form = Form.objects.create(bu=bu, name="F")
    r = ui.post("/forms/pages/new/", {"name": "LP", "title": "Hello", "layout": "hero", "form": form.pk,
                                       "is_published": "on", "blocks_text": "# Why\n\nBecause."})
    assert r.status_code == 302
    assert LandingPage.objects.get(bu=bu).blocks == [{"kind": "heading", "text": "Why"},
                                                      {"kind": "text", "text": "Because."}]
    r = ui.post("/tracking/redirects/new/", {"name": "R", "destination": "https://acme.test/",
                                              "utm_source": "x"})
    assert r.status_code == 302 and CustomRedirect.objects.filter(bu=bu).exists()
    r = ui.post("/tracking/files/new/", {"name": "Doc", "upload": SimpleUploadedFile("a.pdf", b"%PDF")})
    assert r.status_code == 302 and TrackedFile.objects.get(bu=bu).filename == "a.pdf"
    for url in ("/forms/", "/tracking/redirects/", "/tracking/files/"):
        assert ui.get(url).status_code == 200


def test_visitor_pages_scoped_by_bu(ui, bu, other_bu):
    v = Visitor.objects.create(bu=bu, cookie_id=uuid.uuid4())
    Activity.objects.create(bu=bu, visitor=v, type=ActivityType.PAGE_VIEW, occurred_at=v.first_seen_at,
                            url="https://acme.test/x", title="X page")
    foreign = Visitor.objects.create(bu=other_bu, cookie_id=uuid.uuid4())
    r = ui.get("/tracking/visitors/")
    assert r.status_code == 200 and f"Visitor {v.pk}" in r.content.decode()
    assert "X page" in ui.get(f"/tracking/visitors/{v.pk}/").content.decode()
    assert ui.get(f"/tracking/visitors/{foreign.pk}/").status_code == 404


def test_sales_cannot_reach_form_builder(client, sales_user):
    client.login(username=sales_user.email, password=PASSWORD)
    assert client.get("/forms/new/").status_code == 403


def _activity(bu, type_, asset_type, asset_id, *, machine=False, days_ago=0, prospect=None):
    import datetime as dt

    from django.utils import timezone

    return Activity.objects.create(bu=bu, type=type_, asset_type=asset_type, asset_id=asset_id, is_machine=machine,
                                   prospect=prospect, occurred_at=timezone.now() - dt.timedelta(days=days_ago))


def test_form_report_counts_views_submissions_and_conversion(ui, bu, other_bu, marketing_access):
    from loopline.forms import services as form_services

    form = form_services.save_form(marketing_access, {"name": "Demo form"}, [{"prospect_field": "email"}])
    for _ in range(4):
        _activity(bu, ActivityType.FORM_VIEW, "form", form.pk)
    _activity(bu, ActivityType.FORM_SUCCESS, "form", form.pk)
    _activity(bu, ActivityType.FORM_VIEW, "form", form.pk, machine=True)  # a bot: counted apart
    _activity(bu, ActivityType.FORM_VIEW, "form", form.pk, days_ago=60)  # outside the 30-day period
    _activity(other_bu, ActivityType.FORM_VIEW, "form", form.pk)  # another BU's activity never counts
    r = ui.get(f"/forms/{form.pk}/report/")
    assert r.status_code == 200
    report = r.context["report"]
    totals = {t["label"]: t for t in report["totals"]}
    assert totals["Views"]["period"] == 4 and totals["Views"]["all"] == 5 and totals["Views"]["machine"] == 1
    assert totals["Submissions"]["period"] == 1 and report["conversion"] == 25.0
    assert len(report["chart"]["labels"]) == 30 and report["chart"]["datasets"][0]["data"][-1] == 4
    html = r.content.decode()
    assert "chart.umd.min.js" in html and 'id="asset-daily"' in html and "25.0%" in html
    # The period filter; garbage falls back to 30 days.
    assert ui.get(f"/forms/{form.pk}/report/?days=90").context["report"]["chart"]["labels"].__len__() == 90
    assert ui.get(f"/forms/{form.pk}/report/?days=x' OR 1=1").status_code == 200
    # The list page compares assets in a chart and links to the report.
    html = ui.get("/forms/").content.decode()
    assert 'id="forms-chart"' in html and f"/forms/{form.pk}/report/" in html


def test_asset_reports_for_handlers_pages_redirects_and_files(ui, bu, other_bu, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    handler = FormHandler.objects.create(bu=bu, name="Webinar handler")
    form = Form.objects.create(bu=bu, name="LP form")
    page = LandingPage.objects.create(bu=bu, name="Spring page", form=form)
    link = CustomRedirect.objects.create(bu=bu, name="Spring link", destination="https://acme.test/spring")
    _activity(bu, ActivityType.FORM_HANDLER_SUCCESS, "form_handler", handler.pk)
    _activity(bu, ActivityType.LANDING_PAGE_SUCCESS, "landing_page", page.pk)
    _activity(bu, ActivityType.FORM_VIEW, "landing_page", page.pk)
    _activity(bu, ActivityType.CUSTOM_REDIRECT_CLICK, "custom_redirect", link.pk)
    _activity(bu, ActivityType.CUSTOM_REDIRECT_CLICK, "custom_redirect", link.pk, machine=True)
    r = ui.get(f"/forms/handlers/{handler.pk}/report/")
    assert r.status_code == 200 and r.context["report"]["totals"][0]["period"] == 1
    r = ui.get(f"/forms/pages/{page.pk}/report/")
    assert r.context["report"]["conversion"] == 100.0
    r = ui.get(f"/tracking/redirects/{link.pk}/report/")
    clicks = r.context["report"]["totals"][0]
    assert (clicks["period"], clicks["machine"]) == (1, 1)
    assert 'id="assets-chart"' in ui.get("/tracking/redirects/").content.decode()
    upload = SimpleUploadedFile("guide.pdf", b"%PDF-1.4 demo", content_type="application/pdf")
    ui.post("/tracking/files/new/", {"name": "Guide", "upload": upload})
    tracked = TrackedFile.objects.get(bu=bu)
    assert ui.get(f"/tracking/files/{tracked.pk}/report/").status_code == 200
    # Another business unit's assets answer 404.
    foreign = CustomRedirect.objects.create(bu=other_bu, name="Theirs", destination="https://other.test/")
    assert ui.get(f"/tracking/redirects/{foreign.pk}/report/").status_code == 404
    foreign_form = Form.objects.create(bu=other_bu, name="Theirs")
    assert ui.get(f"/forms/{foreign_form.pk}/report/").status_code == 404


@pytest.mark.parametrize("hostname, guess", [
    ("gw1.acme-corp.com", "acme-corp.com"), ("mail.acme.co.uk", "acme.co.uk"), ("acme.com.", "acme.com"),
    ("dsl-84-12.pool.isp.net", ""), ("ec2-1-2-3-4.compute-1.amazonaws.com", ""), ("", ""), (".", ""),
    ("10.0.0.1", ""), ("localhost", "")])
def test_company_guess_from_hostname(hostname, guess):
    from loopline.tracking.selectors import company_guess

    assert company_guess(hostname) == guess


def test_visitor_pages_show_the_company_guess(ui, bu, monkeypatch):
    import socket

    from loopline.tracking import services

    v = Visitor.objects.create(bu=bu, cookie_id=uuid.uuid4(), ip="192.0.2.7")
    unknown = Visitor.objects.create(bu=bu, cookie_id=uuid.uuid4(), ip="192.0.2.8")

    def fake_lookup(ip):
        if ip == "192.0.2.7":
            return ("gw1.initech.example.com", [], [ip])
        raise socket.herror("unknown host")

    monkeypatch.setattr(socket, "gethostbyaddr", fake_lookup)
    assert services.resolve_visitor_hostnames() == 2
    v.refresh_from_db()
    unknown.refresh_from_db()
    assert v.hostname == "gw1.initech.example.com" and unknown.hostname == services.UNRESOLVED
    assert services.resolve_visitor_hostnames() == 0  # failures are not retried
    assert "example.com" in ui.get("/tracking/visitors/").content.decode()
    r = ui.get(f"/tracking/visitors/{v.pk}/")
    assert r.context["company_guess"] == "example.com"
    assert ui.get(f"/tracking/visitors/{unknown.pk}/").context["hostname"] == ""
