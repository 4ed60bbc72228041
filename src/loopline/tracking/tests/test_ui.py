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
