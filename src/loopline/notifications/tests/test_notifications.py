"""Notifications ([M32]): real-time alerts to the assigned user, starred prospects, assignment emails, digests, the
notify-user action, preferences, and the live badge the open browser polls."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from loopline.conftest import PASSWORD
from loopline.notifications import services
from loopline.notifications.models import Notification, Preference, StarredProspect
from loopline.platform import actions
from loopline.prospects import services as prospect_services
from loopline.prospects.models import ActivityType, Prospect

T = ActivityType


@pytest.fixture
def prospect(bu, sales_user):
    p = prospect_services.create_prospect(bu, {"email": "ada@example.com", "first_name": "Ada", "company": "Acme"})
    prospect_services.assign_prospect(p, sales_user)
    return Prospect.objects.get(pk=p.pk)


def test_assigned_user_is_alerted_in_app_and_by_email(bu, sales_user, prospect, mailoutbox, immediate_tasks,
                                                      django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        prospect_services.record_activity(bu.pk, T.FORM_SUCCESS, prospect=prospect, title="Contact us")
    alert = Notification.objects.get(user=sales_user, kind="prospect_activity")
    assert alert.title == "Ada (ada@example.com) from Acme submitted a form"
    assert alert.url.endswith(f"/prospects/{prospect.pk}/") and alert.prospect_id == prospect.pk
    assert any("submitted a form" in m.subject for m in mailoutbox)


def test_machine_events_page_views_and_unassigned_prospects_do_not_alert(bu, sales_user, prospect):
    prospect_services.record_activity(bu.pk, T.EMAIL_CLICK, prospect=prospect, is_machine=True)
    prospect_services.record_activity(bu.pk, T.PAGE_VIEW, prospect=prospect)
    loner = prospect_services.create_prospect(bu, {"email": "x@example.com"})
    prospect_services.record_activity(bu.pk, T.FORM_SUCCESS, prospect=loner)
    assert not Notification.objects.filter(kind="prospect_activity").exists()


def test_preferences_switch_channels_off(bu, sales_user, prospect, mailoutbox, immediate_tasks,
                                         django_capture_on_commit_callbacks):
    services.save_preferences(sales_user, bu, {"prospect_activity-app": "1", "digest": "none"})  # email unticked
    with django_capture_on_commit_callbacks(execute=True):
        prospect_services.record_activity(bu.pk, T.VISIT, prospect=prospect)
    assert Notification.objects.filter(user=sales_user, kind="prospect_activity").count() == 1
    assert not [m for m in mailoutbox if "visit" in m.subject]
    services.save_preferences(sales_user, bu, {"digest": "none"})  # nothing ticked
    prospect_services.record_activity(bu.pk, T.VISIT, prospect=prospect)
    assert Notification.objects.filter(user=sales_user, kind="prospect_activity").count() == 1


def test_starring_a_prospect_follows_its_activity(bu, marketing_user, sales_user, prospect):
    prospect_services.update_prospect(prospect, {"starred": True}, actor=marketing_user)
    assert StarredProspect.objects.filter(user=marketing_user, prospect=prospect).exists()
    prospect_services.record_activity(bu.pk, T.EMAIL_CLICK, prospect=prospect)
    assert Notification.objects.filter(user=marketing_user, kind="starred_activity").count() == 1
    assert Notification.objects.filter(user=sales_user, kind="prospect_activity").count() == 1
    prospect_services.update_prospect(Prospect.objects.get(pk=prospect.pk), {"starred": False}, actor=marketing_user)
    assert not StarredProspect.objects.exists()


def test_assignment_email(bu, admin_user, sales_user, mailoutbox, immediate_tasks, django_capture_on_commit_callbacks):
    p = prospect_services.create_prospect(bu, {"email": "new@example.com"})
    with django_capture_on_commit_callbacks(execute=True):
        prospect_services.assign_prospect(p, sales_user, actor=admin_user)
    assert Notification.objects.filter(user=sales_user, kind="assignment").exists()
    assert [m for m in mailoutbox if m.to == [sales_user.email] and "assigned to you" in m.subject]


def test_notify_user_action_goes_through_notify(bu, marketing_user, prospect):
    cleaned = actions.validate_actions(bu, [{"type": "notify_user", "user_id": marketing_user.pk}])
    outcome = actions.run_actions(cleaned, actions.ActionContext(bu=bu, prospect=prospect, source="form",
                                                                 source_id=3))
    assert outcome[0].ok
    n = Notification.objects.get(user=marketing_user, kind="action")
    assert "completed a form" in n.title and "#3" in n.body


def test_daily_digest_once_per_day(bu, sales_user, prospect, mailoutbox):
    Prospect.objects.filter(pk=prospect.pk).update(last_activity_at=timezone.now(), score=42)
    assert services.send_digests() >= 1
    digest = [m for m in mailoutbox if m.to == [sales_user.email]]
    assert len(digest) == 1 and "ada@example.com" in digest[0].body and "score 42" in digest[0].body
    services.send_digests()  # a retried run sends nothing twice
    assert len([m for m in mailoutbox if m.to == [sales_user.email]]) == 1
    Preference.objects.filter(user=sales_user).update(last_digest_at=timezone.now() - dt.timedelta(days=1))
    Prospect.objects.filter(pk=prospect.pk).update(last_activity_at=timezone.now() - dt.timedelta(days=3))
    services.send_digests()
    assert len([m for m in mailoutbox if m.to == [sales_user.email]]) == 1  # nothing active: no email


def _client(user) -> Client:
    client = Client()
    assert client.login(username=user.email, password=PASSWORD) or client.login(email=user.email, password=PASSWORD)
    return client


def test_live_badge_shows_new_alerts_and_answers_204_when_nothing_changed(bu, sales_user, prospect):
    Notification.objects.all().delete()  # the fixture's assignment alert
    client = _client(sales_user)
    first = client.get("/notifications/live/")
    assert first.status_code == 200 and 'after=0&amp;unread=0' in first.content.decode()
    assert client.get("/notifications/live/?after=0&unread=0").status_code == 204
    prospect_services.record_activity(bu.pk, T.FORM_SUCCESS, prospect=prospect)
    n = Notification.objects.get(user=sales_user)
    fresh = client.get("/notifications/live/?after=0&unread=0")
    body = fresh.content.decode()
    assert fresh.status_code == 200 and f'data-notification-id="{n.pk}"' in body and 'data-unread="1"' in body
    assert client.get(f"/notifications/live/?after={n.pk}&unread=1").status_code == 204
    # Reading the list marks them read; the badge follows.
    assert client.get("/notifications/").status_code == 200
    assert client.get(f"/notifications/live/?after={n.pk}&unread=1").status_code == 200


def test_notifications_are_private_to_each_user(bu, sales_user, marketing_user, prospect):
    prospect_services.record_activity(bu.pk, T.FORM_SUCCESS, prospect=prospect)
    page = _client(marketing_user).get("/notifications/").content.decode()
    assert "submitted a form" not in page


def test_preferences_page_round_trip(bu, sales_user):
    client = _client(sales_user)
    assert client.get("/notifications/preferences/").status_code == 200
    response = client.post("/notifications/preferences/", {"assignment-email": "1", "digest": "all"})
    assert response.status_code == 302
    pref = Preference.objects.get(user=sales_user, bu=bu)
    assert pref.digest == "all" and services.wants(pref, "assignment", "email")
    assert not services.wants(pref, "assignment", "app")


def test_header_carries_the_live_badge_when_enabled(client, marketing_user, settings):  # [M32]
    client.force_login(marketing_user)
    settings.NOTIFICATIONS_LIVE_BADGE = True
    assert b'id="notif-live"' in client.get("/prospects/").content
    settings.NOTIFICATIONS_LIVE_BADGE = False
    assert b'id="notif-live"' not in client.get("/prospects/").content
