"""The prospect page's CRM buttons: "Sync with CRM" ([R3]) and "Allow CRM record to be recreated" ([R31]).

Thin: both call connector services and come back to the prospect page with the outcome as a message.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from loopline.accounts.decorators import member_required
from loopline.prospects import selectors as prospect_selectors

from .salesforce.auth import AuthError
from .salesforce.client import CrmApiError
from .sync import deletions, manual


def _back(prospect):
    if prospect.is_deleted:
        return redirect("prospects:recycle_bin")
    return redirect("prospects:detail", prospect.pk)


@require_POST
@member_required("prospects.view")
def sync_prospect(request, pk: int):
    prospect = prospect_selectors.get_prospect(request.access, pk)
    try:
        result = manual.sync_prospect_now(request.access, prospect)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return _back(prospect)
    except (CrmApiError, AuthError) as exc:
        # The CRM is down or refuses the connector: say so; the change stays queued for the worker.
        messages.error(request, f"The CRM could not be reached: {exc}")
        return _back(prospect)
    (messages.success if result.ok else messages.warning)(request, result.message)
    return _back(prospect)


@require_POST
@member_required("prospects.view")
def allow_recreate(request, pk: int):
    prospect = prospect_selectors.get_prospect(request.access, pk, include_deleted=True)
    try:
        deletions.allow_recreate_for(request.access, prospect)
    except ValidationError as exc:
        messages.warning(request, " ".join(exc.messages))
        return _back(prospect)
    messages.success(
        request, "The CRM record may be recreated: once assigned, the prospect creates a new one."
    )
    return _back(prospect)
