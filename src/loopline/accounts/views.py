"""Sign-in, password flows, business-unit switching and the users/roles/audit administration pages."""

from __future__ import annotations

from typing import Any, cast

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import PasswordResetForm
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from loopline.platform.models import AuditLog

from . import services
from .abilities import ACTIONS, BUILTIN_ROLES, MODULES
from .decorators import client_ip, member_required
from .forms import ChangeRoleForm, InviteUserForm, RoleForm, ThrottledAuthenticationForm
from .models import Membership, Role
from .selectors import members_of, roles_for

# --- Sign-in and passwords --------------------------------------------------------------------------------------------


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    authentication_form = ThrottledAuthenticationForm
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    pass


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "accounts/password_reset_form.html"
    email_template_name = "accounts/email/password_reset.txt"
    subject_template_name = "accounts/email/password_reset_subject.txt"
    success_url = reverse_lazy("accounts:password_reset_done")

    def form_valid(self, form):
        # Throttled requests get the same answer as sent ones; only the email is skipped.
        if not services.allow_password_reset(form.cleaned_data["email"], client_ip(self.request)):
            return redirect(self.get_success_url())
        return super().form_valid(form)


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "accounts/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("accounts:password_reset_complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "accounts/password_reset_complete.html"


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("accounts:password_change_done")


class PasswordChangeDoneView(auth_views.PasswordChangeDoneView):
    template_name = "accounts/password_change_done.html"


def _send_password_link(request, user, *, invite: bool) -> None:
    """Email a one-time link to choose a password (Django's reset tokens), through the configured email backend."""
    form = PasswordResetForm({"email": user.email})
    if form.is_valid():
        prefix = "invite" if invite else "password_reset"
        form.save(
            request=request,
            use_https=request.is_secure(),
            subject_template_name=f"accounts/email/{prefix}_subject.txt",
            email_template_name=f"accounts/email/{prefix}.txt",
            extra_email_context=cast(Any, {"bu": getattr(request.access, "bu", None), "inviter": request.user}),
        )


# --- Business-unit switcher ---------------------------------------------------------------------------------------


@require_POST
@member_required()
def switch_bu(request):
    try:
        membership = services.switch_business_unit(request.user, request.POST.get("bu"), ip=client_ip(request))
    except PermissionDenied:
        raise Http404("No such business unit") from None
    from .middleware import SESSION_BU_KEY

    request.session[SESSION_BU_KEY] = membership.bu_id
    messages.success(request, f"You are now working in {membership.bu.name}.")
    target = request.POST.get("next") or ""
    # Pages of a record belong to the old BU; land on the section's list instead.
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}) or any(
        ch.isdigit() for ch in target.split("?")[0]
    ):
        target = reverse("home")
    return redirect(target)


# --- Users and roles ------------------------------------------------------------------------------------------------


@member_required("users.view")
def users(request):
    access = request.access
    custom_roles = Role.objects.filter(bu=access.bu).order_by("name")
    return render(request, "accounts/users.html", {
        "members": members_of(access.bu),
        "custom_roles": custom_roles,
        "builtin_roles": Role.objects.filter(bu__isnull=True).order_by("id"),
        "role_form_factory": ChangeRoleForm,
        "roles": roles_for(access.bu).order_by("bu_id", "name"),
    })


@member_required("users.create")
def user_add(request):
    access = request.access
    form = InviteUserForm(request.POST or None, bu=access.bu)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            user, password = services.invite_user(
                access, data["email"], data["role"], first_name=data["first_name"], last_name=data["last_name"]
            )
        except ValidationError as exc:
            form.add_error("email", exc.messages[0])
        else:
            if data["delivery"] == "email" or password is None:
                _send_password_link(request, user, invite=True)
                messages.success(request, f"{user.email} was added as {data['role'].name}. "
                                          "We emailed them a link to choose a password.")
                return redirect("accounts:users")
            return render(request, "accounts/user_created.html",
                          {"new_user": user, "password": password, "role": data["role"]})
    return render(request, "accounts/user_form.html", {"form": form})


def _member(request, membership_id) -> Membership:
    return get_object_or_404(Membership.objects.select_related("user", "role"), pk=membership_id, bu=request.access.bu)


@require_POST
@member_required("users.edit")
def member_role(request, membership_id: int):
    membership = _member(request, membership_id)
    form = ChangeRoleForm(request.POST, bu=request.access.bu)
    if form.is_valid():
        try:
            services.change_member_role(request.access, membership, form.cleaned_data["role"])
        except ValidationError as exc:
            messages.error(request, exc.messages[0])
        else:
            messages.success(request, f"{membership.user.email} is now {form.cleaned_data['role'].name}.")
    else:
        messages.error(request, "Choose one of the roles in the list.")
    return redirect("accounts:users")


@require_POST
@member_required("users.delete")
def member_remove(request, membership_id: int):
    membership = _member(request, membership_id)
    email = membership.user.email
    try:
        services.remove_membership(request.access, membership)
    except ValidationError as exc:
        messages.error(request, exc.messages[0])
    else:
        messages.success(request, f"{email} no longer has access to {request.access.bu.name}.")
    return redirect("accounts:users")


@require_POST
@member_required("users.edit")
def member_send_link(request, membership_id: int):
    membership = _member(request, membership_id)
    _send_password_link(request, membership.user, invite=False)
    messages.success(request, f"We emailed {membership.user.email} a link to choose a new password.")
    return redirect("accounts:users")


def _ability_grid(selected: set[str]):
    return [
        {"module": key, "label": label,
         "cells": [{"ability": f"{key}.{action}", "action": action, "checked": f"{key}.{action}" in selected}
                   for action in ACTIONS]}
        for key, label in MODULES.items()
    ]


@member_required("users.edit")
def role_form(request, role_id: int | None = None):
    access = request.access
    role = get_object_or_404(Role, pk=role_id, bu=access.bu) if role_id else None
    initial = {"name": role.name, "prospect_scope": role.prospect_scope} if role else None
    form = RoleForm(request.POST or None, initial=initial)
    selected = set(request.POST.getlist("abilities")) if request.method == "POST" else set(role.abilities if role else [])
    if request.method == "POST" and form.is_valid():
        try:
            role = services.save_custom_role(access, form.cleaned_data["name"], sorted(selected),
                                             form.cleaned_data["prospect_scope"], role=role)
        except ValidationError as exc:
            form.add_error(None, exc.messages[0])
        else:
            messages.success(request, f"Role {role.name} saved.")
            return redirect("accounts:users")
    return render(request, "accounts/role_form.html", {
        "form": form, "role": role, "grid": _ability_grid(selected), "actions": ACTIONS,
    })


@member_required("users.view")
def role_detail(request, key: str):
    """Read-only view of a built-in role's abilities."""
    if key not in BUILTIN_ROLES:
        raise Http404("No such role")
    spec = BUILTIN_ROLES[key]
    return render(request, "accounts/role_builtin.html", {
        "name": spec["name"], "scope": spec["prospect_scope"], "grid": _ability_grid(set(spec["abilities"])),
        "actions": ACTIONS,
    })


# --- Audit log ----------------------------------------------------------------------------------------------------


@member_required("users.view")
def audit_log(request):
    access = request.access
    entries = AuditLog.objects.filter(bu=access.bu).select_related("actor").order_by("-created_at", "-id")
    action = request.GET.get("action", "").strip()
    actor = request.GET.get("actor", "").strip()
    if action:
        entries = entries.filter(action=action)
    if actor.isdigit():
        entries = entries.filter(actor_id=int(actor))
    page = Paginator(entries, 50).get_page(request.GET.get("page"))
    actions = (AuditLog.objects.filter(bu=access.bu).order_by("action").values_list("action", flat=True).distinct())
    return render(request, "accounts/audit_log.html", {
        "page": page, "actions": list(actions), "members": members_of(access.bu),
        "current_action": action, "current_actor": actor,
    })
