"""View guards for the signed-in UI: a member of a business unit, optionally with abilities."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.shortcuts import render


def member_required(*abilities: str):
    """Signed in, a member of a BU (``request.access`` set), and allowed every listed ability (else 403)."""

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            access = getattr(request, "access", None)
            if access is None:
                return render(request, "no_access.html", status=403)
            for ability in abilities:
                if not access.can(ability):
                    raise PermissionDenied(f"Your role ({access.role.name}) does not allow {ability}")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None
