"""Sign-in, throttling, password reset, BU switching, users/roles admin and audit log pages."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import override_settings

from loopline.accounts import services
from loopline.accounts.middleware import SESSION_BU_KEY
from loopline.accounts.models import LoginAttempt, Membership, Role
from loopline.conftest import PASSWORD
from loopline.platform.models import AuditLog

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"


def _login_post(client, email, password, ip="10.0.0.1"):
    return client.post(LOGIN, {"username": email, "password": password}, REMOTE_ADDR=ip)


# --- Sign-in -----------------------------------------------------------------------------------------------------


def test_login_page_renders(client):
    response = client.get(LOGIN)
    assert response.status_code == 200
    assert b"Sign in" in response.content and b"Forgot your password?" in response.content


def test_pages_redirect_anonymous_users_to_login(client):
    for url in ("/", "/prospects/", "/accounts/users/", "/campaigns/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(LOGIN)


def test_login_with_email_case_insensitive_and_session_cycled(client, admin_user):
    client.get(LOGIN)
    before = client.cookies.get("sessionid")
    response = _login_post(client, "ADMIN@acme.test", PASSWORD)
    assert response.status_code == 302
    assert client.cookies["sessionid"].value != (before.value if before else None)
    assert client.get("/prospects/").status_code == 200


def test_wrong_password_shows_generic_error(client, admin_user):
    response = _login_post(client, admin_user.email, "wrong-password")
    assert response.status_code == 200
    assert b"don&#x27;t match" in response.content
    assert LoginAttempt.objects.filter(email=admin_user.email).count() == 1


@override_settings(LOGIN_MAX_FAILURES=3, LOGIN_LOCKOUT_SECONDS=600)
def test_login_locks_after_n_failures_per_email_even_with_right_password(client, admin_user):
    for _ in range(3):
        _login_post(client, admin_user.email, "nope-nope-nope")
    response = _login_post(client, admin_user.email, PASSWORD)
    assert response.status_code == 200
    assert b"Too many failed sign-in attempts" in response.content
    assert "_auth_user_id" not in client.session


@override_settings(LOGIN_MAX_FAILURES=3, LOGIN_LOCKOUT_SECONDS=600)
def test_lockout_message_is_the_same_for_unknown_accounts(client, admin_user):
    for _ in range(3):
        _login_post(client, "nobody@acme.test", "nope-nope-nope", ip="10.0.0.2")
        _login_post(client, admin_user.email, "nope-nope-nope", ip="10.0.0.3")
    unknown = _login_post(client, "nobody@acme.test", "whatever", ip="10.0.0.9")
    known = _login_post(client, admin_user.email, "whatever", ip="10.0.0.8")
    assert b"Too many failed sign-in attempts" in unknown.content
    assert b"Too many failed sign-in attempts" in known.content


@override_settings(LOGIN_MAX_FAILURES=3, LOGIN_MAX_FAILURES_PER_IP=3, LOGIN_LOCKOUT_SECONDS=600)
def test_login_locks_per_ip_across_emails(client, admin_user):
    for i in range(3):
        _login_post(client, f"guess{i}@acme.test", "nope-nope-nope", ip="10.9.9.9")
    response = _login_post(client, admin_user.email, PASSWORD, ip="10.9.9.9")
    assert b"Too many failed sign-in attempts" in response.content
    # Another IP can still sign in.
    assert _login_post(client, admin_user.email, PASSWORD, ip="10.1.1.1").status_code == 302


@override_settings(LOGIN_MAX_FAILURES=3, LOGIN_MAX_FAILURES_PER_IP=10, LOGIN_LOCKOUT_SECONDS=600)
def test_shared_office_ip_has_its_own_higher_limit(client, admin_user):
    for i in range(5):
        _login_post(client, f"colleague{i}@acme.test", "nope-nope-nope", ip="10.9.9.9")
    assert _login_post(client, admin_user.email, PASSWORD, ip="10.9.9.9").status_code == 302


@override_settings(LOGIN_MAX_FAILURES=3, LOGIN_LOCKOUT_SECONDS=600)
def test_successful_login_clears_failures(client, admin_user):
    _login_post(client, admin_user.email, "nope-nope-nope")
    _login_post(client, admin_user.email, "nope-nope-nope")
    assert _login_post(client, admin_user.email, PASSWORD).status_code == 302
    assert not LoginAttempt.objects.filter(email=admin_user.email).exists()


def test_lockout_window_expires(admin_user, settings):
    settings.LOGIN_MAX_FAILURES = 2
    for _ in range(2):
        services.record_failed_login(admin_user.email, "10.0.0.1")
    assert not services.check_login_allowed(admin_user.email, "10.0.0.7")
    LoginAttempt.objects.update(created_at="2000-01-01T00:00:00Z")
    assert services.check_login_allowed(admin_user.email, "10.0.0.7")


def test_logout_is_post_only_and_ends_session(client, admin_user):
    client.force_login(admin_user)
    assert client.get("/accounts/logout/").status_code == 405
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/prospects/").status_code == 302


def test_password_reset_email_link_sets_a_new_password(client, admin_user):
    response = client.post("/accounts/password/reset/", {"email": "Admin@Acme.test"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    body = mail.outbox[0].body
    link = re.search(r"https?://[^/]+(/accounts/password/reset/\S+/)", body).group(1)
    page = client.get(link, follow=True)
    assert page.status_code == 200 and b"Choose a new password" in page.content
    done = client.post(page.redirect_chain[-1][0], {"new_password1": "Brand-new-pass-42", "new_password2": "Brand-new-pass-42"})
    assert done.status_code == 302
    admin_user.refresh_from_db()
    assert admin_user.check_password("Brand-new-pass-42")
    # The link works once.
    assert b"no longer works" in client.get(link, follow=True).content


def test_password_reset_for_unknown_email_sends_nothing_but_looks_the_same(client, admin_user):
    response = client.post("/accounts/password/reset/", {"email": "nobody@acme.test"})
    assert response.status_code == 302
    assert response["Location"] == "/accounts/password/reset/sent/"
    assert len(mail.outbox) == 0


def test_password_reset_requests_are_throttled_per_email_without_revealing_it(client, admin_user, settings):
    settings.PASSWORD_RESET_MAX_PER_EMAIL = 2
    answers = [client.post("/accounts/password/reset/", {"email": "admin@acme.test"}) for _ in range(4)]
    # Every request gets the same "check your inbox" answer; only the first two send an email.
    assert {(r.status_code, r["Location"]) for r in answers} == {(302, "/accounts/password/reset/sent/")}
    assert len(mail.outbox) == 2


def test_password_reset_requests_are_throttled_per_ip(client, admin_user, settings):
    settings.PASSWORD_RESET_MAX_PER_IP = 3
    for i in range(3):
        client.post("/accounts/password/reset/", {"email": f"someone{i}@acme.test"})
    client.post("/accounts/password/reset/", {"email": "admin@acme.test"})
    assert len(mail.outbox) == 0


def test_password_change(client, admin_user):
    client.force_login(admin_user)
    assert client.get("/accounts/password/change/").status_code == 200
    response = client.post("/accounts/password/change/", {
        "old_password": PASSWORD, "new_password1": "Another-pass-99", "new_password2": "Another-pass-99"})
    assert response.status_code == 302
    admin_user.refresh_from_db()
    assert admin_user.check_password("Another-pass-99")


def test_user_without_membership_sees_explanation(client, db):
    user = services.create_user("lonely@acme.test", password=PASSWORD)
    client.force_login(user)
    response = client.get("/prospects/")
    assert response.status_code == 403
    assert b"not in a business unit" in response.content


# --- BU switcher -----------------------------------------------------------------------------------------------------


def test_bu_switch_to_own_membership_is_audited(client, admin_user, bu, other_bu):
    services.set_membership(other_bu, admin_user, "marketing")
    client.force_login(admin_user)
    page = client.get("/prospects/")
    assert b"Globex Marketing" in page.content  # in the switcher
    response = client.post("/accounts/switch-bu/", {"bu": other_bu.pk, "next": "/prospects/"})
    assert response.status_code == 302 and response["Location"] == "/prospects/"
    assert client.session[SESSION_BU_KEY] == other_bu.pk
    page = client.get("/prospects/")
    assert page.context["access"].bu == other_bu
    assert AuditLog.objects.filter(action="bu.switch", actor=admin_user, bu=other_bu).exists()


def test_bu_switch_to_foreign_bu_is_refused(client, admin_user, bu, other_bu):
    client.force_login(admin_user)
    response = client.post("/accounts/switch-bu/", {"bu": other_bu.pk})
    assert response.status_code == 404
    assert client.session.get(SESSION_BU_KEY) != other_bu.pk
    assert client.post("/accounts/switch-bu/", {"bu": "abc"}).status_code == 404


def test_bu_switch_from_a_record_page_lands_on_home(client, admin_user, bu, other_bu):
    services.set_membership(other_bu, admin_user, "administrator")
    client.force_login(admin_user)
    response = client.post("/accounts/switch-bu/", {"bu": other_bu.pk, "next": "/prospects/12/"})
    assert response["Location"] == "/"
    response = client.post("/accounts/switch-bu/", {"bu": bu.pk, "next": "https://evil.example/"})
    assert response["Location"] == "/"


# --- Navigation by ability --------------------------------------------------------------------------------------------


def test_navigation_follows_abilities(client, admin_user, marketing_user, sales_user):
    client.force_login(admin_user)
    admin_page = client.get("/prospects/").content.decode()
    assert "Users and roles" in admin_page and "Audit log" in admin_page and "Recycle bin" in admin_page
    client.force_login(marketing_user)
    marketing_page = client.get("/prospects/").content.decode()
    assert "Campaigns" in marketing_page and "Users and roles" not in marketing_page
    client.force_login(sales_user)
    sales_page = client.get("/prospects/").content.decode()
    assert "Campaigns" not in sales_page and "Users and roles" not in sales_page


# --- Users and roles ---------------------------------------------------------------------------------------------------


def test_users_page_for_admin(client, admin_user, marketing_user):
    client.force_login(admin_user)
    response = client.get("/accounts/users/")
    assert response.status_code == 200
    assert b"marketer@acme.test" in response.content and b"Sales Manager" in response.content


@pytest.mark.parametrize("url", ["/accounts/users/", "/accounts/users/add/", "/accounts/roles/new/", "/accounts/audit/"])
def test_marketing_cannot_open_admin_pages(client, marketing_user, url):
    client.force_login(marketing_user)
    response = client.get(url)
    assert response.status_code == 403
    assert b"can't open this page" in response.content


def test_add_user_shows_generated_password_once(client, admin_user, bu):
    client.force_login(admin_user)
    assert client.get("/accounts/users/add/").status_code == 200
    role = Role.objects.get(key="sales")
    response = client.post("/accounts/users/add/", {"email": "New.Rep@acme.test", "first_name": "New", "last_name": "Rep",
                                                    "role": role.pk, "delivery": "show"})
    assert response.status_code == 200
    password = response.context["password"]
    assert password and password.encode() in response.content
    membership = Membership.objects.get(user__email="new.rep@acme.test", bu=bu)
    assert membership.role == role
    assert membership.user.check_password(password)
    assert AuditLog.objects.filter(action="membership.set", actor=admin_user).exists()


def test_add_user_by_email_invitation(client, admin_user, bu):
    client.force_login(admin_user)
    role = Role.objects.get(key="marketing")
    response = client.post("/accounts/users/add/", {"email": "invitee@acme.test", "role": role.pk, "delivery": "email"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["invitee@acme.test"]
    assert "/accounts/password/reset/" in mail.outbox[0].body


def test_add_existing_member_shows_error(client, admin_user, marketing_user):
    client.force_login(admin_user)
    role = Role.objects.get(key="sales")
    response = client.post("/accounts/users/add/", {"email": marketing_user.email, "role": role.pk, "delivery": "show"})
    assert response.status_code == 200
    assert b"already a member" in response.content


def test_change_role_and_remove_member(client, admin_user, marketing_user, bu):
    client.force_login(admin_user)
    membership = Membership.objects.get(user=marketing_user, bu=bu)
    sales = Role.objects.get(key="sales")
    assert client.post(f"/accounts/users/{membership.pk}/role/", {"role": sales.pk}).status_code == 302
    membership.refresh_from_db()
    assert membership.role == sales
    assert client.post(f"/accounts/users/{membership.pk}/remove/").status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert AuditLog.objects.filter(action="membership.remove").exists()


def test_last_admin_cannot_be_demoted(client, admin_user, bu):
    client.force_login(admin_user)
    membership = Membership.objects.get(user=admin_user, bu=bu)
    sales = Role.objects.get(key="sales")
    response = client.post(f"/accounts/users/{membership.pk}/role/", {"role": sales.pk}, follow=True)
    assert b"at least one administrator" in response.content
    membership.refresh_from_db()
    assert membership.role.key == "administrator"


def test_member_of_other_bu_is_not_reachable(client, admin_user, other_bu):
    outsider = services.create_user("outsider@globex.test", password=PASSWORD)
    foreign = services.set_membership(other_bu, outsider, "marketing")
    client.force_login(admin_user)
    assert client.post(f"/accounts/users/{foreign.pk}/remove/").status_code == 404
    assert client.post(f"/accounts/users/{foreign.pk}/role/", {"role": 1}).status_code == 404


def test_custom_role_grid_and_save(client, admin_user, bu):
    client.force_login(admin_user)
    page = client.get("/accounts/roles/new/")
    assert page.status_code == 200 and b'value="prospects.view"' in page.content
    response = client.post("/accounts/roles/new/", {"name": "Events team", "prospect_scope": "assigned",
                                                     "abilities": ["prospects.view", "campaigns.view", "campaigns.edit"]})
    assert response.status_code == 302
    role = Role.objects.get(bu=bu, name="Events team")
    assert role.abilities == ["campaigns.edit", "campaigns.view", "prospects.view"]
    assert role.prospect_scope == "assigned"
    edit = client.get(f"/accounts/roles/{role.pk}/")
    assert edit.status_code == 200 and b'value="campaigns.edit" aria-label="Campaigns: edit" checked' in edit.content
    assert client.get("/accounts/roles/builtin/sales/").status_code == 200


def test_custom_role_of_other_bu_is_404(client, admin_user, other_bu):
    role = Role.objects.create(bu=other_bu, name="Theirs", abilities=[])
    client.force_login(admin_user)
    assert client.get(f"/accounts/roles/{role.pk}/").status_code == 404


def test_duplicate_role_name_shows_error(client, admin_user):
    client.force_login(admin_user)
    client.post("/accounts/roles/new/", {"name": "Events", "prospect_scope": "all", "abilities": ["prospects.view"]})
    response = client.post("/accounts/roles/new/", {"name": "events", "prospect_scope": "all"})
    assert response.status_code == 200 and b"already exists" in response.content


# --- Audit log -------------------------------------------------------------------------------------------------------------


def test_audit_log_shows_before_and_after_and_filters(client, admin_user, marketing_user, bu):
    client.force_login(admin_user)
    membership = Membership.objects.get(user=marketing_user, bu=bu)
    client.post(f"/accounts/users/{membership.pk}/role/", {"role": Role.objects.get(key="sales").pk})
    response = client.get("/accounts/audit/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "membership.set" in content and "Marketing" in content and "Sales" in content
    filtered = client.get("/accounts/audit/", {"action": "bu.create"})
    assert all(e.action == "bu.create" for e in filtered.context["page"])
    by_actor = client.get("/accounts/audit/", {"actor": admin_user.pk})
    assert all(e.actor_id == admin_user.pk for e in by_actor.context["page"])


def test_audit_log_only_shows_current_bu(client, admin_user, other_bu):
    from loopline.platform import audit

    audit.record("secret.thing", bu=other_bu, summary="other BU")
    client.force_login(admin_user)
    assert b"secret.thing" not in client.get("/accounts/audit/").content
