"""The ``send_autoresponder`` completion action (params: {"email_id": int})."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from loopline.platform.actions import ActionType


def _validate(bu, params) -> dict:
    from .models import Email

    try:
        email_id = int(params.get("email_id"))
    except (TypeError, ValueError):
        raise ValidationError("email_id must be a whole number") from None
    if not Email.objects.filter(bu_id=bu.pk, pk=email_id, is_archived=False).exists():
        raise ValidationError("no such email in this business unit")
    return {"email_id": email_id}


def _run(ctx, params) -> str:
    from . import services

    key = f"autoresponder:{params['email_id']}:{ctx.source}:{ctx.source_id or 0}"
    queued = services.send_to_prospects(ctx.bu, params["email_id"], [ctx.prospect.pk], kind="autoresponder",
                                        source=ctx.source or "action", source_id=ctx.source_id, dedupe_key=key)
    return "autoresponder queued" if queued else "autoresponder not sent (already sent or not mailable)"


send_autoresponder_action = ActionType("send_autoresponder", "Send autoresponder email", _validate, _run)
