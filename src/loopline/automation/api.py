"""REST API for lists and membership ([M16]). Registered on the v1 API by ``api/views.py``:
``api.add_router("/", automation_router)``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ninja import Field, Query, Router, Schema, Status

from loopline.api.schemas import ErrorOut
from loopline.prospects import selectors as prospect_selectors

from . import selectors, services
from .models import ListMembership

router = Router(tags=["lists"])
ERRORS: dict[int, Any] = {401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 422: ErrorOut}


class ListOut(Schema):
    id: int
    name: str
    kind: str
    criteria: dict
    is_public: bool
    public_name: str
    public_description: str
    member_count: int
    refreshed_at: dt.datetime | None
    created_at: dt.datetime


class ListIn(Schema):
    name: str | None = None
    kind: str | None = Field(None, description="static | dynamic (dynamic lists need criteria)")
    criteria: dict | None = Field(None, description='Rule tree, e.g. {"match": "all", "rules": [...]}')
    is_public: bool | None = None
    public_name: str | None = None
    public_description: str | None = None


class MemberIds(Schema):
    prospect_ids: list[int] = Field(..., max_length=10_000)


class MemberOut(Schema):
    id: int
    email: str


class MemberPage(Schema):
    items: list[MemberOut]
    next_after_id: int | None


class ChangeOut(Schema):
    added: int = 0
    removed: int = 0


def _data(payload: ListIn) -> dict[str, Any]:
    return {k: v for k, v in payload.dict().items() if v is not None}


@router.get("/lists", response={200: list[ListOut], **ERRORS})
def list_lists(request):
    request.access.require("lists.view")
    return list(selectors.lists(request.access.bu)[:1000])


@router.post("/lists", response={201: ListOut, **ERRORS})
def create_list(request, payload: ListIn):
    return Status(201, services.save_list(request.access, _data(payload)))


@router.get("/lists/{int:list_id}", response={200: ListOut, **ERRORS})
def get_list(request, list_id: int):
    request.access.require("lists.view")
    return selectors.get_list(request.access.bu, list_id)


@router.patch("/lists/{int:list_id}", response={200: ListOut, **ERRORS})
def update_list(request, list_id: int, payload: ListIn):
    pl = selectors.get_list(request.access.bu, list_id)
    return services.save_list(request.access, _data(payload), instance=pl)


@router.delete("/lists/{int:list_id}", response={204: None, **ERRORS})
def delete_list(request, list_id: int):
    services.delete_list(request.access, selectors.get_list(request.access.bu, list_id))
    return Status(204, None)


@router.get("/lists/{int:list_id}/members", response={200: MemberPage, **ERRORS})
def list_members(request, list_id: int, after_id: int = Query(0, ge=0, le=2**62),
                 limit: int = Query(100, ge=1, le=1000)):
    """Members (not unsubscribed from the list), by id; page with ``after_id``."""
    request.access.require("lists.view")
    pl = selectors.get_list(request.access.bu, list_id)
    qs = selectors.members(request.access, pl).order_by("id").filter(id__gt=after_id)
    items = list(qs.values("id", "email")[: limit + 1])
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next_after_id": items[-1]["id"] if more else None}


def _visible(request, ids: list[int]) -> list[int]:
    return list(prospect_selectors.scoped_prospects(request.access).filter(pk__in=ids).values_list("pk", flat=True))


@router.post("/lists/{int:list_id}/members", response={200: ChangeOut, **ERRORS})
def add_members(request, list_id: int, payload: MemberIds):
    """Add prospects to a static list. Ids of other business units or deleted prospects are ignored."""
    request.access.require("lists.edit")
    pl = selectors.get_list(request.access.bu, list_id)
    added = services.add_to_list(request.access.bu, pl, _visible(request, payload.prospect_ids),
                                 ListMembership.Source.API)
    return {"added": added}


@router.post("/lists/{int:list_id}/members/remove", response={200: ChangeOut, **ERRORS})
def remove_members(request, list_id: int, payload: MemberIds):
    request.access.require("lists.edit")
    pl = selectors.get_list(request.access.bu, list_id)
    return {"removed": services.remove_from_list(request.access.bu, pl, _visible(request, payload.prospect_ids))}


@router.post("/lists/{int:list_id}/refresh", response={200: ChangeOut, **ERRORS})
def refresh(request, list_id: int):
    """Rebuild a dynamic list's membership now."""
    request.access.require("lists.edit")
    added, removed = services.refresh_list(selectors.get_list(request.access.bu, list_id))
    return {"added": added, "removed": removed}
