from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from ninja import Field, Schema


class ErrorOut(Schema):
    detail: str
    errors: dict[str, list[str]] = Field(default_factory=dict)


class ProspectIn(Schema):
    """Standard fields by name; custom fields under ``custom`` by their API name. Omitted fields are left as they are."""

    email: str | None = None
    salutation: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    website: str | None = None
    job_title: str | None = None
    department: str | None = None
    address_one: str | None = None
    address_two: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None
    country: str | None = None
    phone: str | None = None
    fax: str | None = None
    industry: str | None = None
    annual_revenue: str | float | None = None
    employees: str | int | None = None
    source: str | None = None
    comments: str | None = None
    opted_out: bool | None = None
    do_not_email: bool | None = None
    do_not_call: bool | None = None
    starred: bool | None = None
    reviewed: bool | None = None
    custom: dict[str, Any] = Field(default_factory=dict)


class ProspectOut(Schema):
    id: int
    email: str
    salutation: str
    first_name: str
    last_name: str
    company: str
    website: str
    job_title: str
    department: str
    address_one: str
    address_two: str
    city: str
    state: str
    zip: str
    country: str
    phone: str
    fax: str
    industry: str
    annual_revenue: Decimal | None
    employees: int | None
    source: str
    comments: str
    score: int
    grade: str
    last_activity_at: dt.datetime | None
    opted_out: bool
    do_not_email: bool
    do_not_call: bool
    starred: bool
    reviewed: bool
    assigned_user_id: int | None
    source_campaign_id: int | None
    crm_lead_id: str
    crm_contact_id: str
    crm_account_id: str
    crm_owner_id: str
    crm_last_sync_at: dt.datetime | None
    is_deleted: bool
    custom: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


class ProspectPage(Schema):
    items: list[ProspectOut]
    next_after_id: int | None = Field(None, description="Pass as after_id to get the next page; null on the last page.")


class ActivityOut(Schema):
    id: int
    type: int
    type_name: str
    occurred_at: dt.datetime
    title: str
    url: str
    asset_type: str
    asset_id: int | None
    is_machine: bool
    points: int


class CustomFieldOut(Schema):
    api_name: str
    name: str
    type: str
    options: list[str]
    required: bool
