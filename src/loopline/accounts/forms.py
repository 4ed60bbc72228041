from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from . import services
from .decorators import client_ip
from .models import Role
from .selectors import roles_for


class ThrottledAuthenticationForm(AuthenticationForm):
    """Email + password sign-in that refuses further tries after too many failures for an email or from an IP."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That email and password don't match. Check both and try again.",
        "throttled": "Too many failed sign-in attempts. For your security, sign-in is paused for %(minutes)s minutes. "
                     "You can reset your password meanwhile.",
    }

    def __init__(self, request=None, *args, **kwargs):
        super().__init__(request, *args, **kwargs)
        self.fields["username"].label = "Email"
        self.fields["username"].widget.attrs.update({"autocomplete": "email", "autofocus": True})
        self.fields["password"].widget.attrs.update({"autocomplete": "current-password"})

    def clean(self):
        email = (self.cleaned_data.get("username") or "").strip().lower()
        ip = client_ip(self.request) if self.request is not None else None
        if not services.check_login_allowed(email, ip):
            raise ValidationError(
                self.error_messages["throttled"], code="throttled",
                params={"minutes": max(1, settings.LOGIN_LOCKOUT_SECONDS // 60)},
            )
        try:
            cleaned = super().clean()
        except ValidationError:
            if email and self.cleaned_data.get("password"):
                services.record_failed_login(email, ip)
            raise
        services.clear_failed_logins(email, ip)
        return cleaned


class InviteUserForm(forms.Form):
    DELIVERY_CHOICES = [
        ("show", "Show me a generated password to pass on"),
        ("email", "Email them a link to choose their own password"),
    ]
    email = forms.EmailField(label="Email")
    first_name = forms.CharField(max_length=80, required=False)
    last_name = forms.CharField(max_length=80, required=False)
    role = forms.ModelChoiceField(queryset=Role.objects.none(), empty_label=None)
    delivery = forms.ChoiceField(choices=DELIVERY_CHOICES, widget=forms.RadioSelect, initial="show",
                                 label="How will they sign in the first time?")

    def __init__(self, *args, bu, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].queryset = roles_for(bu).order_by("bu_id", "name")
        # Least privilege by default: an administrator must choose a wider role on purpose.
        self.fields["role"].initial = Role.objects.filter(bu__isnull=True, key="sales").values_list("pk", flat=True).first()


class ChangeRoleForm(forms.Form):
    role = forms.ModelChoiceField(queryset=Role.objects.none(), empty_label=None)

    def __init__(self, *args, bu, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].queryset = roles_for(bu).order_by("bu_id", "name")


class RoleForm(forms.Form):
    name = forms.CharField(max_length=80)
    prospect_scope = forms.ChoiceField(
        choices=[("all", "All prospects in the business unit"), ("assigned", "Only prospects assigned to the user")],
        widget=forms.RadioSelect, initial="all", label="Prospects they can see",
    )
