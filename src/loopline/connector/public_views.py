"""The "Send to Loopline" endpoint ([R3]): the CRM side calls it with a lead/contact id.

``POST /connector/<bu-slug>/send-to-loopline`` with header ``X-Loopline-Token: <per-connector secret>`` or
``Authorization: Bearer <secret>`` (the secret is shown by
``loopline connector status --json`` as ``send_to_loopline.token``) and a JSON body ``{"id": "00Q…"}`` (or form
field ``id``). Works while the connector is paused. Answers JSON; bad input gets a clear 4xx, never a 500.
"""

from __future__ import annotations

import json
import logging

from django.core.exceptions import ValidationError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .models import Connector
from .salesforce.auth import AuthError
from .salesforce.client import CrmApiError

logger = logging.getLogger("loopline.connector.send_to_loopline")


@csrf_exempt
@require_POST
def send_to_loopline(request: HttpRequest, bu_slug: str) -> JsonResponse:
    from .sync import manual

    connector = Connector.objects.select_related("bu").filter(bu__slug=bu_slug).first()
    token = request.headers.get("X-Loopline-Token", "")
    scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
    if not token and scheme.lower() == "bearer":
        token = bearer  # what the CRM sandbox's button (and most webhook senders) use
    if connector is None or not manual.check_token(connector, token):
        return JsonResponse({"ok": False, "error": "unknown business unit or wrong token"}, status=403)
    crm_id = ""
    if request.content_type == "application/json":
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return JsonResponse({"ok": False, "error": "the body is not valid JSON"}, status=400)
        crm_id = str(body.get("id") or "") if isinstance(body, dict) else ""
    else:
        crm_id = request.POST.get("id", "")
    if not crm_id:
        return JsonResponse({"ok": False, "error": "send the lead or contact id as 'id'"}, status=400)
    try:
        result = manual.send_to_loopline(connector, crm_id)
    except ValidationError as exc:
        return JsonResponse({"ok": False, "error": "; ".join(exc.messages)}, status=400)
    except (CrmApiError, AuthError) as exc:
        logger.warning("send to loopline %s failed: %s", crm_id, exc)
        return JsonResponse({"ok": False, "error": f"the CRM answered: {exc}"}, status=502)
    status = 200 if result.ok else 422
    return JsonResponse({"ok": result.ok, "message": result.message, "prospect_id": result.prospect_id},
                        status=status)
