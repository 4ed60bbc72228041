"""The public REST API, version 1. Authenticate with ``Authorization: Bearer ll_<prefix>_<secret>`` (an API key)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from ninja import NinjaAPI, Query, Router, Status
from ninja.errors import AuthenticationError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.security import HttpBearer

from loopline.accounts.services import authenticate_api_key
from loopline.prospects import selectors, services
from loopline.prospects.models import ActivityType, CustomField

from .schemas import ActivityOut, CustomFieldOut, ErrorOut, ProspectIn, ProspectOut, ProspectPage


class ApiKeyAuth(HttpBearer):
    def authenticate(self, request, token):
        access = authenticate_api_key(token)
        if access is not None:
            request.access = access
        return access


api = NinjaAPI(
    title="Loopline API",
    version="1",
    urls_namespace="api-v1",
    auth=ApiKeyAuth(),
    description="Prospects, activities and custom fields of the business unit the API key belongs to.",
)


@api.exception_handler(services.ProspectValidationError)
def on_prospect_invalid(request, exc):
    return api.create_response(request, {"detail": str(exc), "errors": exc.errors}, status=422)


@api.exception_handler(ValidationError)
def on_invalid(request, exc):
    return api.create_response(request, {"detail": "; ".join(exc.messages), "errors": {}}, status=422)


@api.exception_handler(NinjaValidationError)
def on_bad_request(request, exc):
    errors: dict[str, list[str]] = {}
    for err in exc.errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "payload", "query"))
        errors.setdefault(loc or "request", []).append(err.get("msg", "invalid"))
    return api.create_response(request, {"detail": "Invalid request", "errors": errors}, status=422)


@api.exception_handler(Http404)
def on_not_found(request, exc):
    return api.create_response(request, {"detail": "Not found", "errors": {}}, status=404)


@api.exception_handler(PermissionDenied)
def on_forbidden(request, exc):
    return api.create_response(request, {"detail": str(exc) or "Forbidden", "errors": {}}, status=403)


@api.exception_handler(AuthenticationError)
def on_unauthenticated(request, exc):
    return api.create_response(request, {"detail": "Missing or invalid API key", "errors": {}}, status=401)


router = Router(tags=["prospects"])
ERRORS: dict[int, Any] = {401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 422: ErrorOut}


def _data(payload: ProspectIn) -> dict[str, Any]:
    data = {k: v for k, v in payload.dict(exclude={"custom"}).items() if v is not None}
    data.update({f"custom.{k}": v for k, v in payload.custom.items()})
    return data


@router.get("/prospects", response={200: ProspectPage, **ERRORS})
def list_prospects(
    request,
    email: str | None = Query(None, description="Exact email (case-insensitive)"),
    updated_since: str | None = Query(None, description="ISO datetime"),
    after_id: int = Query(0, ge=0, le=2**62),
    limit: int = Query(100, ge=1, le=200),
):
    request.access.require("prospects.view")
    qs = selectors.scoped_prospects(request.access).order_by("id").filter(id__gt=after_id)
    if email:
        qs = qs.filter(email=email.strip().lower())
    if updated_since:
        from django.utils.dateparse import parse_datetime

        since = parse_datetime(updated_since)
        if since is None:
            raise ValidationError("updated_since must be an ISO 8601 datetime")
        qs = qs.filter(updated_at__gte=since)
    items = list(qs[: limit + 1])
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next_after_id": items[-1].pk if more else None}


@router.get("/prospects/{int:prospect_id}", response={200: ProspectOut, **ERRORS})
def get_prospect(request, prospect_id: int):
    request.access.require("prospects.view")
    return selectors.get_prospect(request.access, prospect_id)


@router.post("/prospects", response={201: ProspectOut, **ERRORS})
def create_prospect(request, payload: ProspectIn):
    request.access.require("prospects.create")
    if not payload.email:
        raise services.ProspectValidationError({"email": ["Email is required"]})
    prospect = services.create_prospect(request.access.bu, _data(payload), actor=request.access.user, source="api")
    return Status(201, prospect)


@router.patch("/prospects/{int:prospect_id}", response={200: ProspectOut, **ERRORS})
def update_prospect(request, prospect_id: int, payload: ProspectIn):
    request.access.require("prospects.edit")
    prospect = selectors.get_prospect(request.access, prospect_id)
    services.update_prospect(prospect, _data(payload), actor=request.access.user, source="api")
    prospect.refresh_from_db()
    return prospect


@router.delete("/prospects/{int:prospect_id}", response={204: None, **ERRORS})
def delete_prospect(request, prospect_id: int):
    """Moves the prospect to the recycle bin (it can be undeleted)."""
    request.access.require("prospects.delete")
    prospect = selectors.get_prospect(request.access, prospect_id)
    services.move_to_recycle_bin(prospect, actor=request.access.user)
    return Status(204, None)


@router.get("/prospects/{int:prospect_id}/activities", response={200: list[ActivityOut], **ERRORS})
def prospect_activities(request, prospect_id: int, limit: int = Query(100, ge=1, le=500)):
    request.access.require("prospects.view")
    prospect = selectors.get_prospect(request.access, prospect_id)
    labels = dict(ActivityType.choices)
    return [
        {**{f: getattr(a, f) for f in ActivityOut.model_fields if f != "type_name"}, "type_name": labels.get(a.type, "")}
        for a in selectors.timeline(prospect, limit=limit)
    ]


@router.get("/custom-fields", response={200: list[CustomFieldOut], **ERRORS}, tags=["custom fields"])
def custom_fields(request):
    request.access.require("prospects.view")
    return list(CustomField.objects.filter(bu=request.access.bu).order_by("name"))


api.add_router("/", router)

from loopline.automation.api import router as lists_router  # noqa: E402  (after the prospects router: path order)

api.add_router("/", lists_router)
