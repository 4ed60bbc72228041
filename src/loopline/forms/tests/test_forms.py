import json
import uuid

import pytest
from django.core.exceptions import ValidationError
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from loopline.forms import services
from loopline.forms.models import FormHandler
from loopline.prospects import services as ps
from loopline.prospects.models import Activity, ActivityType, Prospect, Visitor
from loopline.tracking import services as ts
from loopline.tracking.ingest import ingest_all

pytestmark = pytest.mark.django_db


def submit(client, form, data, **extra):
    return client.post(f"/f/{form.key}/", data, **extra)


def test_form_needs_an_email_field_and_known_fields(marketing_access):
    with pytest.raises(ValidationError):
        services.save_form(marketing_access, {"name": "x"}, [{"prospect_field": "first_name"}])
    with pytest.raises(ValidationError):
        services.save_form(marketing_access, {"name": "x"}, [{"prospect_field": "email"}, {"prospect_field": "nope"}])
    with pytest.raises(ValidationError):
        services.save_form(marketing_access, {"name": "x", "actions": [{"type": "explode"}]},
                           [{"prospect_field": "email"}])


def test_sales_cannot_build_forms(sales_access):
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        services.save_form(sales_access, {"name": "x"}, [{"prospect_field": "email"}])


def test_get_renders_form_and_records_view(client, contact_form, bu):
    r = client.get(f"/f/{contact_form.key}/")
    assert r.status_code == 200
    html = r.content.decode()
    assert 'name="email"' in html and 'name="lp_website"' in html and 'name="source"' not in html
    assert f"visitor_id{bu.pk}" in r.cookies
    assert Activity.objects.filter(type=ActivityType.FORM_VIEW, asset_id=contact_form.pk).count() == 1
    assert "frame-ancestors" in r["Content-Security-Policy"]


def _activity_points(prospect) -> int:
    from django.db.models import Sum

    return Activity.objects.filter(prospect=prospect).aggregate(n=Sum("points"))["n"] or 0


def test_successful_submission_creates_prospect_runs_actions_and_shows_thanks(client, contact_form, bu):
    r = submit(client, contact_form, {"email": "New@Example.com", "first_name": "Nia", "company": "Acme"})
    assert r.status_code == 200
    assert "Thank you" in r.content.decode()
    p = Prospect.objects.get(bu=bu, email="new@example.com")
    assert p.first_name == "Nia" and p.company == "Acme" and p.source == "website"
    # The score also moves by the points the activities themselves earn under the BU's scoring rules.
    assert p.score - _activity_points(p) == 5 and list(p.tags.values_list("name", flat=True)) == ["contact"]
    assert Activity.objects.filter(prospect=p, type=ActivityType.FORM_SUCCESS).count() == 1
    # Every submission fires the actions again ([M10]).
    submit(client, contact_form, {"email": "new@example.com", "first_name": "Nia"})
    p.refresh_from_db()
    assert p.score - _activity_points(p) == 10


def test_errors_keep_input_and_are_recorded(client, contact_form, bu):
    r = submit(client, contact_form, {"email": "not-an-email", "first_name": "", "company": "<b>Acme</b>"})
    assert r.status_code == 400
    html = r.content.decode()
    assert 'value="not-an-email"' in html and "&lt;b&gt;Acme&lt;/b&gt;" in html and "<b>Acme</b>" not in html
    assert "First name is required" in html
    err = Activity.objects.get(type=ActivityType.FORM_ERROR, asset_id=contact_form.pk)
    assert "email" in err.data["errors"] and err.data["values"]["email"] == "not-an-email"
    assert not Prospect.objects.filter(bu=bu).exists()


def test_honeypot_looks_successful_but_stores_nothing(client, contact_form, bu):
    r = submit(client, contact_form, {"email": "bot@example.com", "first_name": "Bot", "lp_website": "http://spam"})
    assert r.status_code == 200 and "Thank you" in r.content.decode()
    assert not Prospect.objects.filter(bu=bu).exists()


def test_submissions_are_rate_limited_per_ip(client, contact_form, settings):
    settings.FORMS_RATE_PER_MINUTE = 2
    codes = [submit(client, contact_form, {"email": f"a{i}@example.com", "first_name": "A"}).status_code
             for i in range(4)]
    assert codes == [200, 200, 429, 429]
    assert Activity.objects.filter(type=ActivityType.FORM_ERROR).count() == 2


def test_challenge_when_enabled(client, marketing_access):
    form = services.save_form(marketing_access, {"name": "Q", "captcha": True}, [{"prospect_field": "email"}])
    r = submit(client, form, {"email": "q@example.com", "lp_challenge": "99", "lp_challenge_token": "forged"})
    assert r.status_code == 400 and "Please answer the question" in r.content.decode()
    question, token = services.new_challenge()
    a, b = [int(x) for x in question.removeprefix("What is ").removesuffix("?").split(" + ")]
    r = submit(client, form, {"email": "q@example.com", "lp_challenge": str(a + b), "lp_challenge_token": token})
    assert r.status_code == 200


def test_submission_identifies_visitor_and_moves_earlier_activity(client, contact_form, bu):
    tracker = ts.tracker_config(bu)
    vid = uuid.uuid4().hex
    client.post(f"/t/{tracker.key}/hit", data=json.dumps({"visitor": vid, "hits": [{"url": "https://acme.test/a"},
                                                        {"url": "https://acme.test/b"}]}), content_type="text/plain")
    ingest_all()
    visitor = Visitor.objects.get(bu=bu, cookie_id=uuid.UUID(vid))
    assert Activity.objects.filter(visitor=visitor, prospect__isnull=True).count() == 3
    r = submit(client, contact_form, {"email": "v@example.com", "first_name": "Vi", "lp_vid": vid})
    assert r.status_code == 200
    p = Prospect.objects.get(bu=bu, email="v@example.com")
    visitor.refresh_from_db()
    assert visitor.prospect_id == p.pk
    assert Activity.objects.filter(visitor=visitor, prospect__isnull=True).count() == 0
    assert Activity.objects.filter(prospect=p, type=ActivityType.PAGE_VIEW).count() == 2
    # Later page views of the same browser belong to the prospect directly.
    client.post(f"/t/{tracker.key}/hit", data=json.dumps({"visitor": vid, "url": "https://acme.test/c"}),
                content_type="text/plain")
    ingest_all()
    assert Activity.objects.filter(prospect=p, type=ActivityType.PAGE_VIEW).count() == 3
    # A second browser of the same person.
    vid2 = uuid.uuid4().hex
    submit(client, contact_form, {"email": "v@example.com", "first_name": "Vi", "lp_vid": vid2})
    assert p.visitors.count() == 2


def test_consent_required_means_no_cookie_but_submission_recorded(client, contact_form, bu):
    tracker = ts.tracker_config(bu)
    tracker.require_consent = True
    tracker.save()
    r = client.get(f"/f/{contact_form.key}/")
    assert f"visitor_id{bu.pk}" not in r.cookies
    assert not Activity.objects.filter(type=ActivityType.FORM_VIEW).exists()
    vid = uuid.uuid4().hex
    r = submit(client, contact_form, {"email": "c@example.com", "first_name": "C", "lp_vid": vid})
    assert r.status_code == 200 and f"visitor_id{bu.pk}" not in r.cookies
    p = Prospect.objects.get(email="c@example.com")
    assert Activity.objects.filter(prospect=p, type=ActivityType.FORM_SUCCESS).exists()
    assert not Visitor.objects.filter(bu=bu).exists()


def test_gpc_means_no_cookie(client, contact_form, bu):
    r = client.get(f"/f/{contact_form.key}/", HTTP_SEC_GPC="1")
    assert f"visitor_id{bu.pk}" not in r.cookies
    assert not Visitor.objects.exists()


def test_progressive_profiling_hides_known_fields(client, contact_form, bu):
    p = ps.create_prospect(bu, {"email": "k@example.com", "company": "Known Inc"})
    vid = uuid.uuid4().hex
    ts.identify_visitor(bu.pk, vid, p)
    html = client.get(f"/f/{contact_form.key}/?vid={vid}").content.decode()
    assert 'name="company"' not in html and 'name="first_name"' in html
    from django.test import Client

    assert 'name="company"' in Client().get(f"/f/{contact_form.key}/").content.decode()


def test_recycled_prospect_is_restored_by_submission(client, contact_form, bu):
    p = ps.create_prospect(bu, {"email": "gone@example.com"})
    ps.move_to_recycle_bin(p)
    r = submit(client, contact_form, {"email": "gone@example.com", "first_name": "Back"})
    assert r.status_code == 200
    p.refresh_from_db()
    assert not p.is_deleted and p.first_name == "Back"
    assert Prospect.objects.filter(bu=bu, email="gone@example.com").count() == 1


def test_redirect_after_success(client, marketing_access):
    form = services.save_form(marketing_access, {"name": "R", "redirect_url": "https://acme.test/thanks"},
                              [{"prospect_field": "email"}])
    r = submit(client, form, {"email": "r@example.com"})
    assert r.status_code == 302 and r["Location"] == "https://acme.test/thanks"


@pytest.mark.parametrize("path", ["/f/nope/", "/f/" + "x" * 300 + "/", "/fh/nope", "/lp/nope/", "/f/nope/embed.js"])
def test_unknown_public_assets_404(client, path):
    assert client.get(path).status_code == 404
    assert client.post(path, {"email": "a@b.c"}).status_code in (404, 405)


def test_garbage_posts_never_500(client, contact_form):
    for data in [{"email": "\x00"}, {"email": "a@b.c" * 1000, "first_name": "x" * 100000}, {"first_name": ["a", "b"]},
                 {"email": "a@example.com", "first_name": "\ud800".encode("utf-8", "surrogatepass")}]:
        r = submit(client, contact_form, data)
        assert r.status_code < 500
    r = client.post(f"/f/{contact_form.key}/", data=b"\xff\xfe garbage", content_type="application/octet-stream")
    assert r.status_code < 500
    r = client.put(f"/f/{contact_form.key}/")
    assert r.status_code == 405
    before = Activity.objects.count()
    assert client.head(f"/f/{contact_form.key}/").status_code == 200
    assert Activity.objects.count() == before  # HEAD is not a submission


# --- Form handlers ([M5]) ---------------------------------------------------------------------------------------------


def post_urlencoded(client, path, data, **extra):
    from urllib.parse import urlencode

    return client.post(path, urlencode(data), content_type="application/x-www-form-urlencoded", **extra)


@pytest.fixture
def handler(marketing_access):
    return services.save_form_handler(marketing_access, {
        "name": "Webinar", "success_url": "https://acme.test/ok", "error_url": "https://acme.test/error?x=1",
        "mappings": [{"name": "Email", "field": "email"}, {"name": "fname", "field": "first_name", "required": True}],
        "actions": [{"type": "add_tag", "tag": "webinar"}],
    })


def test_form_handler_success_redirects_and_identifies(client, handler, bu):
    vid = uuid.uuid4().hex
    r = post_urlencoded(client, f"/fh/{handler.key}", {"Email": "h@example.com", "fname": "Hal", "lp_vid": vid})
    assert r.status_code == 302 and r["Location"] == "https://acme.test/ok"
    p = Prospect.objects.get(email="h@example.com")
    assert Activity.objects.filter(prospect=p, type=ActivityType.FORM_HANDLER_SUCCESS).count() == 1
    assert p.visitors.filter(cookie_id=uuid.UUID(vid)).exists()
    assert list(p.tags.values_list("name", flat=True)) == ["webinar"]


def test_form_handler_error_redirects_with_message(client, handler):
    r = post_urlencoded(client, f"/fh/{handler.key}", {"Email": "bad", "fname": ""})
    assert r.status_code == 302 and r["Location"].startswith("https://acme.test/error?x=1&errorMessage=")
    assert Activity.objects.filter(type=ActivityType.FORM_HANDLER_ERROR).count() == 1


def test_form_handler_accepts_urlencoded_only(client, handler):
    r = client.post(f"/fh/{handler.key}", data='{"Email": "j@example.com"}', content_type="application/json")
    assert r.status_code == 415
    r = client.post(f"/fh/{handler.key}", {"Email": "m@example.com", "fname": "M"})  # multipart
    assert r.status_code == 415
    assert client.get(f"/fh/{handler.key}").status_code == 405
    assert not Prospect.objects.exists()


def test_kiosk_mode_does_not_cookie_or_identify(client, handler, bu):
    FormHandler.objects.filter(pk=handler.pk).update(kiosk=True)
    vid = uuid.uuid4().hex
    r = post_urlencoded(client, f"/fh/{handler.key}", {"Email": "k1@example.com", "fname": "K", "lp_vid": vid},
                    HTTP_COOKIE=f"visitor_id{bu.pk}={vid}")
    assert r.status_code == 302
    assert f"visitor_id{bu.pk}" not in r.cookies
    assert not Visitor.objects.exists()
    assert Prospect.objects.filter(email="k1@example.com").exists()


def test_form_handler_forwarding_is_enqueued(client, marketing_access, django_capture_on_commit_callbacks,
                                             monkeypatch):
    calls = []
    from loopline.forms import views_public

    monkeypatch.setattr(views_public, "enqueue_on_commit", lambda task, *a: calls.append(a))
    h = services.save_form_handler(marketing_access, {
        "name": "Fwd", "success_url": "https://acme.test/ok", "forward_url": "https://crm.example/collect",
        "mappings": [{"name": "email", "field": "email"}]})
    post_urlencoded(client, f"/fh/{h.key}", {"email": "f@example.com", "extra": "1"})
    assert calls == [("https://crm.example/collect", [("email", "f@example.com"), ("extra", "1")])]


# --- Landing pages -----------------------------------------------------------------------------------------------------


def test_landing_page_publish_and_submit(client, marketing_access, contact_form, bu):
    page = services.save_landing_page(marketing_access, {
        "name": "Ebook", "title": "Get the ebook", "layout": "two_column", "form_id": contact_form.pk,
        "blocks": [{"kind": "heading", "text": "Why"}, {"kind": "text", "text": "<script>x</script>"}],
        "actions": [{"type": "add_tag", "tag": "ebook"}]})
    assert client.get(f"/lp/{page.key}/").status_code == 404  # not published
    services.save_landing_page(marketing_access, {"is_published": True}, instance=page)
    html = client.get(f"/lp/{page.key}/").content.decode()
    assert "Get the ebook" in html and "&lt;script&gt;" in html
    r = client.post(f"/lp/{page.key}/", {"email": "lp@example.com", "first_name": "L"})
    assert r.status_code == 200
    p = Prospect.objects.get(email="lp@example.com")
    assert Activity.objects.filter(prospect=p, type=ActivityType.LANDING_PAGE_SUCCESS).count() == 1
    assert set(p.tags.values_list("name", flat=True)) == {"contact", "ebook"}
    client.post(f"/lp/{page.key}/", {"email": "nope"})
    assert Activity.objects.filter(type=ActivityType.LANDING_PAGE_ERROR).count() == 1

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(st.sampled_from(["email", "first_name", "company", "Email", "fname", "lp_vid",
                                             "lp_challenge", "lp_embed", "junk", "lp_page"]), _text, max_size=8))
def test_fuzzed_form_and_handler_posts_never_500(client, contact_form, handler, data):
    from django.test import override_settings

    with override_settings(FORMS_RATE_PER_MINUTE=10**9):
        assert submit(client, contact_form, data).status_code < 500
        assert post_urlencoded(client, f"/fh/{handler.key}", data).status_code < 500
