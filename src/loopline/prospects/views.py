"""Prospect pages: list, detail, create/edit, tags, actions, merge, recycle bin, custom fields. Thin: reads go through
``selectors``, writes through ``services``."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from loopline.accounts.decorators import member_required
from loopline.accounts.models import User
from loopline.campaigns.models import Campaign

from . import selectors, services
from .fields import field_specs
from .forms import CustomFieldForm, ProspectForm, TagForm
from .models import ActivityType, CustomField, Tag

PER_PAGE_CHOICES = (25, 50, 100)
MAX_PAGE = 400  # deeper than this, OFFSET gets slow on big BUs: narrow the search instead
COUNT_CAP = 10_000
TIMELINE_PAGE = 50


def home(request):
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    access = getattr(request, "access", None)
    if access is not None and access.can("reports.view"):
        return redirect("reports:dashboard")
    if access is not None and not access.can("prospects.view") and access.can("campaigns.view"):
        return redirect("campaigns:list")
    return redirect("prospects:list")


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _bu_users(access):
    return User.objects.filter(memberships__bu=access.bu).order_by("email")


def _bu_campaigns(access):
    return Campaign.objects.filter(bu=access.bu).order_by("name")


# --- List ----------------------------------------------------------------------------------------------------------


@member_required("prospects.view")
def prospect_list(request):
    """Search, filters, sort and pagination without an exact COUNT(*): a capped count and next/previous pages."""
    access = request.access
    params = request.GET
    qs = selectors.filter_prospects(access, params)
    per_page = _int(params.get("per_page"), 50)
    per_page = per_page if per_page in PER_PAGE_CHOICES else 50
    page = min(max(_int(params.get("page"), 1), 1), MAX_PAGE)
    offset = (page - 1) * per_page
    rows = list(qs.select_related("assigned_user").prefetch_related("tags")[offset:offset + per_page + 1])
    has_next = len(rows) > per_page and page < MAX_PAGE
    rows = rows[:per_page]
    capped = qs.order_by()[: COUNT_CAP + 1].count()
    sort = params.get("sort") or selectors.DEFAULT_SORT
    context = {
        "rows": rows,
        "page": page,
        "has_next": has_next,
        "has_previous": page > 1,
        "first": offset + 1 if rows else 0,
        "last": offset + len(rows),
        "total": min(capped, COUNT_CAP),
        "total_capped": capped > COUNT_CAP,
        "sort": sort if sort in selectors.SORTS else selectors.DEFAULT_SORT,
        "params": params,
        "per_page": per_page,
        "filtered": any(params.get(k) for k in selectors.FILTER_PARAMS if k != "sort"),
    }
    # The same address serves the whole page or, to htmx, just the table (not on back/forward history restores).
    if request.htmx and not request.htmx.boosted and not request.htmx.history_restore_request:
        response = render(request, "prospects/_table.html", context)
        patch_vary_headers(response, ("HX-Request",))
        # Keep the address bar short and shareable: only the parameters that are set.
        defaults = {"sort": selectors.DEFAULT_SORT, "per_page": "50", "page": "1"}
        clean = [(k, v) for k, v in params.items() if v and defaults.get(k) != v]
        response["HX-Push-Url"] = request.path + (f"?{urlencode(clean)}" if clean else "")
        return response
    context.update({
        "users": _bu_users(access) if access.sees_all_prospects else None,
        "tags": Tag.objects.filter(bu=access.bu).order_by("name")[:300],
        "grades": selectors.GRADES,
        "per_page_choices": PER_PAGE_CHOICES,
    })
    response = render(request, "prospects/list.html", context)
    patch_vary_headers(response, ("HX-Request",))
    return response


# --- Detail ----------------------------------------------------------------------------------------------------------


def _timeline_context(prospect, request):
    type_filter = _int(request.GET.get("type"), 0)
    offset = max(_int(request.GET.get("offset"), 0), 0)
    types = [type_filter] if type_filter in ActivityType.values else None
    items = list(selectors.timeline(prospect, types=types, limit=TIMELINE_PAGE + 1, offset=offset))
    return {
        "activities": items[:TIMELINE_PAGE],
        "more_offset": offset + TIMELINE_PAGE if len(items) > TIMELINE_PAGE else None,
        "type_filter": type_filter if types else 0,
        "activity_types": ActivityType.choices,
        "prospect": prospect,
    }


def _field_rows(prospect, specs):
    rows = []
    for spec in specs:
        value = (prospect.custom or {}).get(spec.key) if spec.custom else getattr(prospect, spec.name)
        rows.append({"spec": spec, "value": value})
    return rows


@member_required("prospects.view")
def prospect_detail(request, pk: int):
    access = request.access
    prospect = selectors.get_prospect(access, pk)
    specs = field_specs(access.bu.pk)
    rows = _field_rows(prospect, specs)
    context = {
        "prospect": prospect,
        "standard_rows": [r for r in rows if not r["spec"].custom and r["spec"].type != "checkbox"],
        "flag_rows": [r for r in rows if not r["spec"].custom and r["spec"].type == "checkbox"],
        "custom_rows": [r for r in rows if r["spec"].custom],
        "empty_count": sum(1 for r in rows if not r["spec"].custom and r["spec"].type != "checkbox"
                           and r["value"] in (None, "")),
        "tags": prospect.tags.order_by("name"),
        "tag_form": TagForm(),
        "visitors_count": prospect.visitors.count(),
        "users": _bu_users(access) if access.sees_all_prospects else None,
        **_timeline_context(prospect, request),
    }
    return render(request, "prospects/detail.html", context)


@member_required("prospects.view")
def prospect_timeline(request, pk: int):
    prospect = selectors.get_prospect(request.access, pk)
    template = "prospects/_timeline_items.html" if request.GET.get("offset") else "prospects/_timeline.html"
    return render(request, template, _timeline_context(prospect, request))


# --- Create / edit ---------------------------------------------------------------------------------------------------


def _prospect_form(request, access, data=None, initial=None):
    return ProspectForm(
        data, initial=initial, specs=field_specs(access.bu.pk),
        users=_bu_users(access) if access.sees_all_prospects else None,
        campaigns=_bu_campaigns(access),
    )


def _trusted_extra(form) -> dict:
    extra = {}
    if "assigned_user" in form.fields:
        extra["assigned_user"] = form.cleaned_data.get("assigned_user")
    if "source_campaign" in form.fields:
        extra["source_campaign"] = form.cleaned_data.get("source_campaign")
    return extra


@member_required("prospects.create")
def prospect_create(request):
    access = request.access
    form = _prospect_form(request, access, request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.service_data()
        extra = _trusted_extra(form)
        if extra.get("assigned_user") is None:
            extra.pop("assigned_user", None)
        elif extra.get("assigned_user"):
            extra["assigned_at"] = timezone.now()
        if not str(data.get("email") or "").strip():
            form.add_error("email", "Email is required")
        else:
            try:
                prospect = services.create_prospect(access.bu, data, actor=request.user, extra=extra)
            except services.ProspectValidationError as exc:
                form.add_service_errors(exc.errors)
            else:
                services.record_activity(access.bu.pk, ActivityType.PROSPECT_CREATED, prospect=prospect,
                                         title=f"Created by {request.user.email}")
                messages.success(request, f"Prospect {prospect} created.")
                return redirect("prospects:detail", pk=prospect.pk)
    return render(request, "prospects/form.html", {"form": form, "prospect": None})


@member_required("prospects.edit")
def prospect_edit(request, pk: int):
    access = request.access
    prospect = selectors.get_prospect(access, pk)
    specs = field_specs(access.bu.pk)
    form = _prospect_form(request, access, request.POST or None, initial=ProspectForm.initial_for(prospect, specs))
    if request.method == "POST" and form.is_valid():
        extra = _trusted_extra(form)
        if "assigned_user" in extra and extra["assigned_user"] != prospect.assigned_user:
            extra["assigned_at"] = timezone.now() if extra["assigned_user"] else None
        try:
            changed = services.update_prospect(prospect, form.service_data(), actor=request.user, extra=extra)
        except services.ProspectValidationError as exc:
            form.add_service_errors(exc.errors)
        else:
            if changed:
                labels = {s.name: s.label for s in specs}
                labels.update({"assigned_user": "Assigned user", "source_campaign": "Source campaign",
                               "assigned_at": ""})
                names = [labels.get(n, n) for n in sorted(changed) if labels.get(n, n)]
                messages.success(request, f"Saved. Changed: {', '.join(names)}.")
            else:
                messages.info(request, "Nothing changed.")
            return redirect("prospects:detail", pk=prospect.pk)
    return render(request, "prospects/form.html", {"form": form, "prospect": prospect})


# --- Tags and quick actions ------------------------------------------------------------------------------------------


def _tags_response(request, prospect, form=None):
    if request.htmx:
        return render(request, "prospects/_tags.html", {
            "prospect": prospect, "tags": prospect.tags.order_by("name"), "tag_form": form or TagForm(),
        })
    return redirect("prospects:detail", pk=prospect.pk)


@require_POST
@member_required("prospects.edit")
def tag_add(request, pk: int):
    prospect = selectors.get_prospect(request.access, pk)
    form: TagForm | None = TagForm(request.POST)
    if form is not None and form.is_valid():
        names = [n for n in form.cleaned_data["name"].split(",") if n.strip()]
        try:
            services.add_tags(prospect, names)
        except ValidationError as exc:
            form.add_error("name", exc.messages[0])
        else:
            form = None
    if not request.htmx and form is not None:
        messages.error(request, "A tag needs 1 to 80 characters.")
    return _tags_response(request, prospect, form)


@require_POST
@member_required("prospects.edit")
def tag_remove(request, pk: int, tag_id: int):
    prospect = selectors.get_prospect(request.access, pk)
    tag = get_object_or_404(Tag, pk=tag_id, bu=request.access.bu)
    services.remove_tag(prospect, tag)
    return _tags_response(request, prospect)


@require_POST
@member_required("prospects.edit")
def prospect_assign(request, pk: int):
    access = request.access
    prospect = selectors.get_prospect(access, pk)
    target = request.POST.get("user", "me")
    if target == "me":
        user = request.user
    elif not access.sees_all_prospects:
        raise PermissionDenied("Your role can only assign prospects to yourself")
    elif target == "none":
        user = None
    else:
        user = get_object_or_404(_bu_users(access), pk=_int(target, 0))
    services.update_prospect(prospect, {}, actor=request.user,
                             extra={"assigned_user": user, "assigned_at": timezone.now() if user else None})
    messages.success(request, f"Assigned to {user.email}." if user else "Unassigned.")
    return redirect("prospects:detail", pk=prospect.pk)


@require_POST
@member_required("prospects.edit")
def prospect_star(request, pk: int):
    prospect = selectors.get_prospect(request.access, pk)
    services.update_prospect(prospect, {"starred": not prospect.starred}, actor=request.user)
    if request.htmx:
        return render(request, "prospects/_star.html", {"prospect": prospect})
    return redirect("prospects:detail", pk=prospect.pk)


@require_POST
@member_required("prospects.delete")
def prospect_recycle(request, pk: int):
    prospect = selectors.get_prospect(request.access, pk)
    services.move_to_recycle_bin(prospect, actor=request.user, reason=request.POST.get("reason", "")[:200])
    messages.success(request, f"{prospect} was moved to the recycle bin.")
    return redirect("prospects:list")


# --- Merge -----------------------------------------------------------------------------------------------------------


@member_required("prospects.edit", "prospects.delete")
def prospect_merge(request, pk: int):
    """Pick the duplicate to merge into this prospect (search), then confirm."""
    access = request.access
    prospect = selectors.get_prospect(access, pk)
    q = request.GET.get("q", "").strip()
    candidates = []
    if q:
        candidates = list(selectors.filter_prospects(access, {"q": q}).exclude(pk=prospect.pk)[:20])
    elif prospect.email or prospect.last_name:
        guess = prospect.email or prospect.last_name
        candidates = list(selectors.filter_prospects(access, {"q": guess}).exclude(pk=prospect.pk)[:20])
    template = "prospects/_merge_candidates.html" if request.htmx else "prospects/merge.html"
    return render(request, template, {"prospect": prospect, "candidates": candidates, "q": q})


@member_required("prospects.edit", "prospects.delete")
def prospect_merge_confirm(request, pk: int, other_pk: int):
    access = request.access
    prospect = selectors.get_prospect(access, pk)
    other = selectors.get_prospect(access, other_pk)
    if prospect.pk == other.pk:
        raise Http404("Choose another prospect")
    if request.method == "POST":
        try:
            survivor = services.merge_prospects(prospect, other, actor=request.user)
        except ValidationError as exc:
            messages.error(request, exc.messages[0])
            return redirect("prospects:merge", pk=prospect.pk)
        messages.success(request, f"Merged. {other} was moved to the recycle bin; its activity now belongs here.")
        return redirect("prospects:detail", pk=survivor.pk)
    specs = [s for s in field_specs(access.bu.pk) if s.type != "checkbox"]
    compare = []
    for spec in specs:
        a = (prospect.custom or {}).get(spec.key) if spec.custom else getattr(prospect, spec.name)
        b = (other.custom or {}).get(spec.key) if spec.custom else getattr(other, spec.name)
        if a in (None, "", []) and b in (None, "", []):
            continue
        compare.append({"label": spec.label, "keep": a, "other": b,
                        "result": b if a in (None, "", []) and spec.name != "email" else a})
    return render(request, "prospects/merge_confirm.html", {"prospect": prospect, "other": other, "compare": compare})


# --- Recycle bin -----------------------------------------------------------------------------------------------------


@member_required("recycle_bin.view")
def recycle_bin(request):
    access = request.access
    per_page = 50
    page = min(max(_int(request.GET.get("page"), 1), 1), MAX_PAGE)
    qs = selectors.scoped_prospects(access, only_deleted=True).order_by("-deleted_at", "-id")
    q = request.GET.get("q", "").strip().lower()
    if q:
        qs = qs.filter(email__startswith=q)
    rows = list(qs[(page - 1) * per_page: page * per_page + 1])
    return render(request, "prospects/recycle_bin.html", {
        "rows": rows[:per_page], "page": page, "has_next": len(rows) > per_page, "has_previous": page > 1, "q": q,
    })


def _deleted_prospect(access, pk):
    prospect = selectors.scoped_prospects(access, only_deleted=True).filter(pk=_int(pk, 0)).first()
    if prospect is None:
        raise Http404("No such prospect in the recycle bin")
    return prospect


@require_POST
@member_required("recycle_bin.edit")
def prospect_undelete(request, pk: int):
    prospect = _deleted_prospect(request.access, pk)
    try:
        services.undelete(prospect, actor=request.user)
    except (ValidationError, IntegrityError):
        messages.error(request, f"{prospect} can't be restored: another prospect now uses {prospect.email}.")
        return redirect("prospects:recycle_bin")
    messages.success(request, f"{prospect} was restored.")
    return redirect("prospects:detail", pk=prospect.pk)


@require_POST
@member_required("recycle_bin.view")
def prospect_delete_permanently(request, pk: int):
    access = request.access
    prospect = _deleted_prospect(access, pk)
    label = str(prospect)
    try:
        services.delete_permanently(access, prospect)
    except PermissionDenied as exc:
        messages.error(request, f"{label} was not deleted: {exc}.")
    except ValidationError as exc:
        messages.error(request, f"{label} was not deleted: {exc.messages[0]}")
    else:
        messages.success(request, f"{label} was deleted permanently.")
    return redirect("prospects:recycle_bin")


# --- Custom fields -----------------------------------------------------------------------------------------------------


@member_required("settings.view")
def custom_fields(request):
    fields = CustomField.objects.filter(bu=request.access.bu).order_by("name")
    return render(request, "prospects/custom_fields.html", {"fields": fields})


@member_required("settings.delete")
def custom_field_delete(request, field_id: int):
    cf = get_object_or_404(CustomField, pk=field_id, bu=request.access.bu)
    if request.method == "POST":
        try:
            count = services.delete_custom_field(request.access, cf)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return redirect("prospects:custom_field_edit", field_id=cf.pk)
        messages.success(request, f"Custom field {cf.name} deleted (values removed from {count} prospects).")
        return redirect("prospects:custom_fields")
    return render(request, "prospects/custom_field_delete.html", {
        "field": cf, "value_count": selectors.custom_value_count(request.access.bu, cf)})


@member_required("settings.edit")
def custom_field_form(request, field_id: int | None = None):
    access = request.access
    instance = get_object_or_404(CustomField, pk=field_id, bu=access.bu) if field_id else None
    initial = None
    if instance is not None:
        initial = {k: getattr(instance, k) for k in ("name", "api_name", "type", "required", "max_length", "min_value",
                                                        "max_value", "pattern", "default_merge_value")}
        initial["options"] = "\n".join(str(o) for o in instance.options or [])
    form = CustomFieldForm(request.POST or None, initial=initial, editing=instance is not None)
    if request.method == "POST" and form.is_valid():
        try:
            cf = services.save_custom_field(access, form.service_data(), instance=instance)
        except ValidationError as exc:
            if hasattr(exc, "error_dict"):
                for key, errors in exc.message_dict.items():
                    form.add_error(key if key in form.fields else None, errors)
            else:
                form.add_error("default_merge_value", exc.messages)
        except IntegrityError:
            form.add_error("api_name", "Another custom field already uses this API name.")
        else:
            messages.success(request, f"Custom field {cf.name} saved.")
            return redirect("prospects:custom_fields")
    return render(request, "prospects/custom_field_form.html", {"form": form, "instance": instance})

