import json
import time
import uuid

import pytest

from loopline.prospects.models import Activity, ActivityType
from loopline.tracking import services, tokens
from loopline.tracking.models import EmailLink

pytestmark = pytest.mark.django_db

UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari"
EARLIER = time.time() - 3600  # delivered an hour ago: not "too fast"


def path(url):
    return url.removeprefix("http://127.0.0.1:8000")


def test_open_pixel_records_open(client, bu, prospect):
    url = services.sign_open_url(bu.pk, 7, prospect.pk, sent_at=EARLIER)
    r = client.get(path(url), HTTP_USER_AGENT=UA)
    assert r.status_code == 200 and r["Content-Type"] == "image/gif" and r.content.startswith(b"GIF89a")
    a = Activity.objects.get(prospect=prospect, type=ActivityType.EMAIL_OPEN)
    assert a.asset_id == 7 and not a.is_machine


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
    lambda t: t[:10],
    lambda t: "x" * 500,
    lambda t: "%00%00",
    lambda t: t + "AAAA",
    lambda t: "",
])
def test_forged_or_altered_tokens_are_404(client, bu, prospect, mangle):
    good = services.sign_open_url(bu.pk, 7, prospect.pk).split("/e/o/")[1].removesuffix(".gif")
    r = client.get(f"/e/o/{mangle(good)}.gif")
    assert r.status_code == 404 and r.content.startswith(b"GIF89a")  # the pixel still renders
    services.register_link(bu.pk, 7, 1, "https://acme.test/")
    click = services.sign_click_url(bu.pk, 7, prospect.pk, 1).split("/e/c/")[1]
    assert client.get(f"/e/c/{mangle(click)}").status_code == 404
    assert not Activity.objects.filter(prospect=prospect).exclude(type=ActivityType.PROSPECT_CREATED).exists()


def test_token_of_another_kind_or_prospect_of_another_bu_is_rejected(client, bu, other_bu, prospect):
    open_token = tokens.make("open", bu_id=bu.pk, send_id=1, prospect_id=prospect.pk)
    assert tokens.read(open_token, "click") is None
    cross = tokens.make("open", bu_id=other_bu.pk, send_id=1, prospect_id=prospect.pk)
    assert client.get(f"/e/o/{cross}.gif").status_code == 404


def test_click_redirects_only_to_stored_url_and_counts_as_open(client, bu, prospect):
    url = services.sign_click_url(bu.pk, 9, prospect.pk, 3, "https://acme.test/pricing?a=1", sent_at=EARLIER)
    r = client.get(path(url) + "?url=https://evil.test/", HTTP_USER_AGENT=UA)
    assert r.status_code == 302 and r["Location"] == "https://acme.test/pricing?a=1"
    types = sorted(Activity.objects.filter(prospect=prospect, asset_id=9).values_list("type", flat=True))
    assert types == [ActivityType.EMAIL_OPEN, ActivityType.EMAIL_CLICK]
    # A second click does not add another implied open.
    client.get(path(url), HTTP_USER_AGENT=UA)
    assert Activity.objects.filter(prospect=prospect, type=ActivityType.EMAIL_OPEN).count() == 1


def test_link_target_cannot_be_changed_or_be_unsafe(bu):
    from django.core.exceptions import ValidationError

    services.register_link(bu.pk, 1, 1, "https://acme.test/")
    with pytest.raises(ValidationError):
        services.register_link(bu.pk, 1, 1, "https://evil.test/")
    for bad in ["javascript:alert(1)", "//evil.test", "data:text/html,x", "ftp://x.test/"]:
        with pytest.raises(ValidationError):
            services.register_link(bu.pk, 2, 5, bad)
    assert EmailLink.objects.count() == 1


def test_unknown_link_is_404_even_with_valid_signature(client, bu, prospect):
    token = tokens.make("click", bu_id=bu.pk, send_id=5, prospect_id=prospect.pk, link_id=99)
    assert client.get(f"/e/c/{token}").status_code == 404


@pytest.mark.parametrize("kwargs,reason", [
    ({"method": "head"}, "HEAD request"),
    ({"HTTP_USER_AGENT": "Mozilla/5.0"}, "privacy proxy user agent"),
    ({"HTTP_USER_AGENT": UA, "REMOTE_ADDR": "17.58.1.2"}, "privacy proxy network"),
    ({"HTTP_USER_AGENT": "Barracuda Sentinel (EE)"}, "scanner user agent"),
])
def test_machine_clicks_are_flagged(client, bu, prospect, kwargs, reason):
    url = path(services.sign_click_url(bu.pk, 11, prospect.pk, 1, "https://acme.test/", sent_at=EARLIER))
    method = kwargs.pop("method", "get")
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == 302
    click = Activity.objects.get(prospect=prospect, type=ActivityType.EMAIL_CLICK)
    assert click.is_machine and click.data["machine_reason"] == reason


def test_click_within_two_seconds_of_delivery_is_machine(client, bu, prospect, monkeypatch):
    from loopline.tracking import machine

    sent = time.time()
    url = path(services.sign_click_url(bu.pk, 12, prospect.pk, 1, "https://acme.test/", sent_at=sent))
    monkeypatch.setattr(machine.time, "time", lambda: int(sent) + 1.5)  # however slow the test machine is
    client.get(url, HTTP_USER_AGENT=UA)
    assert Activity.objects.get(type=ActivityType.EMAIL_CLICK).is_machine


def test_every_link_burst_and_honeypot_are_machine(client, bu, prospect):
    for link in (1, 2, 3):
        client.get(path(services.sign_click_url(bu.pk, 13, prospect.pk, link, f"https://acme.test/{link}",
                                                sent_at=EARLIER)), HTTP_USER_AGENT=UA)
    clicks = Activity.objects.filter(type=ActivityType.EMAIL_CLICK, asset_id=13)
    assert clicks.count() == 3 and all(c.is_machine for c in clicks)
    # Honeypot: a hidden link only machines follow flags the click and the recent events of that send.
    client.get(path(services.sign_click_url(bu.pk, 14, prospect.pk, 1, "https://acme.test/x", sent_at=EARLIER)),
               HTTP_USER_AGENT=UA)
    assert not Activity.objects.get(type=ActivityType.EMAIL_CLICK, asset_id=14).is_machine
    client.get(path(services.sign_click_url(bu.pk, 14, prospect.pk, 2, "https://acme.test/trap", honeypot=True,
                                            sent_at=EARLIER)), HTTP_USER_AGENT=UA)
    assert all(a.is_machine for a in Activity.objects.filter(asset_id=14))


def test_email_link_actions_fire_once_per_prospect_and_never_for_machines(client, bu, prospect):
    from loopline.prospects import services as ps

    # A twin clicking the same way on a link without actions: the score difference is the actions' doing (the
    # activities themselves may score points under the BU's scoring rules).
    twin = ps.create_prospect(bu, {"email": "twin@example.com"})
    acts = [{"type": "adjust_score", "points": 10}, {"type": "add_tag", "tag": "clicked"}]
    url = path(services.sign_click_url(bu.pk, 20, prospect.pk, 1, "https://acme.test/", sent_at=EARLIER,
                                       actions_list=acts))
    plain = path(services.sign_click_url(bu.pk, 22, twin.pk, 1, "https://acme.test/", sent_at=EARLIER))
    client.head(url)  # scanner: recorded, no actions
    client.head(plain)
    prospect.refresh_from_db()
    twin.refresh_from_db()
    assert prospect.score == twin.score and not prospect.tags.exists()
    for _ in range(2):
        client.get(url, HTTP_USER_AGENT=UA)
        client.get(plain, HTTP_USER_AGENT=UA)
    prospect.refresh_from_db()
    twin.refresh_from_db()
    assert prospect.score - twin.score == 10
    assert list(prospect.tags.values_list("name", flat=True)) == ["clicked"]


def test_click_identifies_the_loopline_cookie_visitor(client, bu, prospect):
    vid = uuid.uuid4().hex
    url = path(services.sign_click_url(bu.pk, 21, prospect.pk, 1, "https://acme.test/", sent_at=EARLIER))
    client.get(url, HTTP_USER_AGENT=UA, HTTP_COOKIE=f"visitor_id{bu.pk}={vid}")
    assert prospect.visitors.filter(cookie_id=uuid.UUID(vid)).exists()


def test_click_to_tracked_site_carries_identify_token_that_tracker_uses(client, bu, prospect):
    from loopline.tracking.ingest import ingest_all

    config = services.tracker_config(bu)
    config.allowed_origins = ["https://www.acme.test"]
    config.save()
    url = path(services.sign_click_url(bu.pk, 22, prospect.pk, 1, "https://www.acme.test/offer", sent_at=EARLIER))
    location = client.get(url, HTTP_USER_AGENT=UA)["Location"]
    assert location.startswith("https://www.acme.test/offer?lp_id=")
    token = location.split("lp_id=")[1]
    vid = uuid.uuid4().hex
    client.post(f"/t/{config.key}/hit", data=json.dumps({"visitor": vid, "hits": [{"type": "identify", "token": token},
                                                        {"url": location}]}), content_type="text/plain")
    ingest_all()
    assert prospect.visitors.filter(cookie_id=uuid.UUID(vid)).exists()
    assert Activity.objects.filter(prospect=prospect, type=ActivityType.PAGE_VIEW).count() == 1


def test_pixel_flood_is_rate_limited_and_still_a_gif(client, bu, prospect, settings):
    settings.TRACKING_EMAIL_RATE_PER_IP = 0.001
    url = path(services.sign_open_url(bu.pk, 1, prospect.pk))
    codes = [client.get(url).status_code for _ in range(205)]
    assert codes[-1] == 429 and client.get(url).content.startswith(b"GIF89a")
