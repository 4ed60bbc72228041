from __future__ import annotations

from .access import Access
from .models import Membership

SESSION_BU_KEY = "loopline_bu_id"


class BusinessUnitMiddleware:
    """Sets ``request.access`` (user + current BU + role) for members; ``None`` otherwise."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.access = None
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            memberships = Membership.objects.select_related("bu", "role").filter(user=user)
            wanted = request.session.get(SESSION_BU_KEY)
            chosen = None
            if wanted is not None:
                chosen = memberships.filter(bu_id=wanted).first()
            if chosen is None:
                chosen = memberships.order_by("bu__name").first()
            if chosen is not None:
                chosen.user = user
                request.access = Access.for_membership(chosen)
        return self.get_response(request)
