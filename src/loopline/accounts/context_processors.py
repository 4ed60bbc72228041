from __future__ import annotations

from .models import Membership


def business_unit(request):
    from django.conf import settings

    access = getattr(request, "access", None)
    if access is None:
        return {"access": None, "memberships": []}
    memberships = Membership.objects.select_related("bu", "role").filter(user=access.user).order_by("bu__name")
    return {"access": access, "memberships": memberships, "live_badge": settings.NOTIFICATIONS_LIVE_BADGE}
