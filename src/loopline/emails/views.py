"""Signed-in email pages: emails, editor, preview as a prospect, test sends, list sends with progress, reports,
and the demo inbox."""

from __future__ import annotations

import email as email_lib
import email.policy
import json
import uuid

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone

from loopline.accounts.decorators import member_required
from loopline.prospects.models import Prospect
from loopline.prospects.selectors import scoped_prospects

from . import selectors, services
from .forms import DynamicContentForm, EmailForm, ListSendForm, OneToOneForm, VariationFormSet
from .models import CapturedMessage, DynamicContent, Email, EmailSend


@member_required("emails.view")
def email_list(request):
    bu = request.access.bu
    sends = list(selectors.sends(bu).exclude(kind="test")[:30])
    for s in sends:
        s.counts = services.send_counts(s.pk)
    return render(request, "emails/list.html", {"emails": selectors.emails(bu), "sends": sends})


@member_required("emails.create")
def email_edit(request, pk: int | None = None):
    access = request.access
    obj = get_object_or_404(Email, pk=pk, bu=access.bu) if pk else None
    initial = {} if obj else {"body": DEFAULT_BODY, "from_email": access.user.email,
                              "from_name": access.bu.name, "subject": "News from {{ bu.name }}"}
    form = EmailForm(request.POST or None, instance=obj, bu=access.bu, initial=initial)
    # "builder": the body comes from the visual builder (GrapesJS); the server still compiles and decides.
    editor = "builder" if request.POST.get("editor") == "builder" else "code"
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        if editor == "builder":
            data["body"] = services.mjml_from_builder(data["body"])
        try:
            saved = services.save_email(access, data, instance=obj)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Email saved.")
            if request.POST.get("then") == "edit":
                return redirect(f"{reverse('emails:edit', args=[saved.pk])}?editor={editor}")
            return redirect("emails:preview", pk=saved.pk)
    elif request.GET.get("editor") == "builder":
        editor = "builder"
    blocks = [{"key": b.key, "name": b.name} for b in selectors.dynamic_contents(access.bu)]
    return render(request, "emails/edit.html", {"form": form, "obj": obj, "editor": editor,
                                                "dynamic_blocks": blocks})


def _prospect_choice(request, access, value):
    if not value:
        return None
    try:
        return scoped_prospects(access).get(pk=int(value))
    except (ValueError, Prospect.DoesNotExist):
        return None


@member_required("emails.view")
def email_preview(request, pk: int):
    access = request.access
    obj = get_object_or_404(Email, pk=pk, bu=access.bu)
    prospect = _prospect_choice(request, access, request.GET.get("prospect") or request.POST.get("prospect"))
    query = (request.GET.get("q") or "").strip()
    candidates = scoped_prospects(access).filter(email__icontains=query)[:20] if query else \
        scoped_prospects(access)[:20]
    error = ""
    rendered = None
    try:
        rendered = services.preview(access, obj, prospect)
    except ValidationError as exc:
        error = " ".join(exc.messages)
    test_to = request.POST.get("to") or access.user.email
    if request.method == "POST":
        try:
            delivery = services.send_test(access, obj, test_to, prospect)
            messages.success(request, f"Test sent to {delivery.address}.")
            return redirect(f"{request.path}?prospect={prospect.pk if prospect else ''}")
        except ValidationError as exc:
            error = " ".join(exc.messages)
    return render(request, "emails/preview.html", {
        "obj": obj, "prospect": prospect, "candidates": candidates, "q": query, "error": error,
        "subject": rendered[0] if rendered else "", "html": rendered[1] if rendered else "",
        "text": rendered[2] if rendered else "", "test_to": test_to}, status=400 if error else 200)


@member_required("emails.create")
def email_send(request, pk: int):
    from loopline.automation.selectors import lists

    access = request.access
    obj = get_object_or_404(Email, pk=pk, bu=access.bu)
    form = ListSendForm(request.POST or None, lists=lists(access.bu))
    if request.method == "POST" and form.is_valid():
        when = form.cleaned_data.get("scheduled_at")
        try:
            send = services.create_list_send(access, obj, [int(x) for x in form.cleaned_data["include"]],
                                             [int(x) for x in form.cleaned_data["exclude"]],
                                             scheduled_at=when if when is not None and when > timezone.now() else None)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Send scheduled." if send.status == "scheduled" and send.scheduled_at
                             and send.scheduled_at > timezone.now() else "Sending started.")
            return redirect("emails:send_detail", pk=send.pk)
    return render(request, "emails/send.html", {"obj": obj, "form": form})


def _send_or_404(access, pk: int) -> EmailSend:
    return get_object_or_404(EmailSend.objects.select_related("email"), pk=pk, bu=access.bu)


@member_required("emails.view")
def send_detail(request, pk: int):
    access = request.access
    send = _send_or_404(access, pk)
    if request.method == "POST" and request.POST.get("action") == "cancel":
        try:
            services.cancel_send(access, send)
            messages.success(request, "The send is cancelled.")
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        return redirect("emails:send_detail", pk=send.pk)
    report = selectors.report([send.pk], access.bu.pk)
    template = "emails/_progress.html" if request.htmx else "emails/send_detail.html"
    return render(request, template, {"send": send, "counts": services.send_counts(send.pk), "report": report,
                                      "chart": json.dumps(_chart(report))})


def _chart(report: dict) -> dict:
    return {"labels": ["Sent", "Delivered", "Bounced", "Unique opens (human)", "Unique clicks (human)",
                       "Unsubscribes", "Complaints"],
            "values": [report["sent"], report["delivered"], report["hard_bounces"] + report["soft_bounces"],
                       report["opens_unique_human"], report["clicks_unique_human"], report["unsubscribes"],
                       report["complaints"]]}


@member_required("reports.view")
def campaign_report(request, campaign_id: int):
    from loopline.campaigns.models import Campaign

    access = request.access
    campaign = get_object_or_404(Campaign, pk=campaign_id, bu=access.bu)
    ids = selectors.campaign_send_ids(access.bu, campaign.pk)
    report = selectors.report(ids, access.bu.pk)
    return render(request, "emails/campaign_report.html", {"campaign": campaign, "report": report,
                                                           "chart": json.dumps(_chart(report))})


@member_required("emails.view")
def inbox(request):
    return render(request, "emails/inbox.html", {"rows": CapturedMessage.objects.all()[:200]})


def _parts(raw: str) -> tuple[dict, str, str]:
    msg = email_lib.message_from_string(raw, policy=email.policy.default)
    html_part = msg.get_body(("html",))
    text_part = msg.get_body(("plain",))
    html = html_part.get_content() if html_part is not None else ""
    text = text_part.get_content() if text_part is not None else ""
    headers = {k: str(v) for k, v in msg.items()}
    return headers, html, text


@member_required("emails.view")
def inbox_message(request, pk: int):
    row = get_object_or_404(CapturedMessage, pk=pk)
    try:
        headers, html, text = _parts(row.raw)
    except Exception:
        raise Http404("This message cannot be shown") from None
    # Links open in a new tab; the message runs in a sandboxed frame without scripts.
    html = html.replace("<head>", '<head><base target="_blank">', 1) if "<head>" in html else \
        '<base target="_blank">' + html
    return render(request, "emails/inbox_message.html", {"row": row, "headers": headers, "html": html,
                                                         "text": text})


# --- 1:1 email from the prospect page ([M25]) -------------------------------------------------------------------------


@member_required("one_to_one_email.create")
def one_to_one(request, prospect_id: int):
    from loopline.prospects.selectors import get_prospect

    access = request.access
    prospect = get_prospect(access, prospect_id)  # 404 for prospects this user cannot see (Sales: assigned only)
    templates = selectors.one_to_one_templates(access.bu)
    data = request.POST if request.method == "POST" else None
    form = OneToOneForm(data, templates=templates, initial={"key": uuid.uuid4().hex})
    blocker = services.one_to_one_blocker(prospect)
    rendered, error = None, ""
    if data is not None and form.is_valid():
        cd = form.cleaned_data
        kwargs = {"subject": cd["subject"], "message": cd["message"], "template": cd["template"]}
        try:
            if request.method == "POST" and request.POST.get("action") == "send":
                _send, delivery = services.send_one_to_one(access, prospect, idempotency_key=cd["key"], **kwargs)
                if delivery.status in ("sent", "committed"):
                    messages.success(request, f"Email sent to {delivery.address}.")
                elif delivery.status == "queued":
                    messages.warning(request, "The mail server did not take the email yet; it will be retried.")
                else:
                    messages.error(request, f"The email was not sent: {delivery.reason or delivery.status}.")
                return redirect("prospects:detail", pk=prospect.pk)
            rendered = services.one_to_one_preview(access, prospect, **kwargs)
        except ValidationError as exc:
            error = " ".join(exc.messages)
    return render(request, "emails/one_to_one.html", {
        "prospect": prospect, "form": form, "blocker": blocker, "error": error,
        "subject": rendered[0] if rendered else "", "html": rendered[1] if rendered else "",
        "text": rendered[2] if rendered else ""}, status=400 if error and request.method == "POST" else 200)


# --- Dynamic content blocks ([M24]) -----------------------------------------------------------------------------------


@member_required("emails.view")
def dynamic_list(request):
    access = request.access
    blocks = list(selectors.dynamic_contents(access.bu))
    return render(request, "emails/dynamic_list.html", {"blocks": blocks})


def _variation_initial(block) -> list[dict]:
    return [{"value": v.get("value", ""), "html": v.get("html", "")} for v in (block.variations or [])
            if isinstance(v, dict)] if block else []


@member_required("emails.create")
def dynamic_edit(request, pk: int | None = None):
    access = request.access
    block = get_object_or_404(DynamicContent, pk=pk, bu=access.bu) if pk else None
    fields = services.dynamic_content_fields(access.bu)
    initial = {"name": block.name, "key": block.key, "field": block.field,
               "default_html": block.default_html} if block else {"field": "industry"}
    form = DynamicContentForm(request.POST or None, fields=fields, initial=initial)
    formset = VariationFormSet(request.POST or None, initial=_variation_initial(block), prefix="v")
    if request.method == "POST" and form.is_valid() and formset.is_valid():
        try:
            saved = services.save_dynamic_content(access, form.cleaned_data,
                                                  [f.cleaned_data for f in formset.forms if f.cleaned_data],
                                                  instance=block)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Dynamic content “{saved.name}” saved.")
            return redirect("emails:dynamic_preview", pk=saved.pk)
    return render(request, "emails/dynamic_edit.html", {"form": form, "formset": formset, "dc": block},
                  status=400 if request.method == "POST" else 200)


@member_required("emails.delete")
def dynamic_delete(request, pk: int):
    access = request.access
    block = get_object_or_404(DynamicContent, pk=pk, bu=access.bu)
    used = services.dynamic_content_usage(access.bu, block.key)
    if request.method == "POST":
        try:
            services.delete_dynamic_content(access, block)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return redirect("emails:dynamic_delete", pk=block.pk)
        messages.success(request, f"Dynamic content “{block.name}” deleted.")
        return redirect("emails:dynamic_list")
    return render(request, "emails/dynamic_delete.html", {"dc": block, "used": used})


@member_required("emails.view")
def dynamic_preview(request, pk: int):
    access = request.access
    block = get_object_or_404(DynamicContent, pk=pk, bu=access.bu)
    prospect = _prospect_choice(request, access, request.GET.get("prospect"))
    query = (request.GET.get("q") or "").strip()
    candidates = scoped_prospects(access).filter(email__icontains=query)[:20] if query else \
        scoped_prospects(access)[:20]
    result = services.preview_dynamic_content(block, prospect)
    return render(request, "emails/dynamic_preview.html", {"dc": block, "prospect": prospect, "q": query,
                                                           "candidates": candidates, "result": result})


DEFAULT_BODY = """<mjml>
  <mj-body background-color="#f4f4f7">
    <mj-section background-color="#ffffff">
      <mj-column>
        <mj-text font-size="18px">Hello {{ prospect.first_name|default("there", true) }},</mj-text>
        <mj-text>{% if prospect.company %}Teams at {{ account.name }} {% else %}Teams like yours {% endif %}use our
          new reports to save hours every week.</mj-text>
        <mj-button href="https://www.example.com/reports">See the new reports</mj-button>
        <mj-text>{{ user.full_name|default(bu.name, true) }}</mj-text>
      </mj-column>
    </mj-section>
    <mj-section>
      <mj-column>
        <mj-text font-size="11px" color="#666666" align="center">
          <a href="{{ unsubscribe_url }}">Unsubscribe</a> · <a href="{{ preferences_url }}">Email preferences</a><br>
          {{ bu.name }} · {{ bu.postal_address }}
        </mj-text>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>"""
