"""Small template helpers for the UI shell."""

from __future__ import annotations

from django import template
from django.utils.http import urlencode

register = template.Library()


@register.filter
def can(access, ability: str) -> bool:
    """``{% if access|can:"prospects.edit" %}`` — the role allows this ability in the current BU."""
    return bool(access) and access.can(ability)


@register.filter
def get_item(mapping, key):
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.simple_tag(takes_context=True)
def query(context, **changes) -> str:
    """The current query string with some parameters replaced (None or "" removes them); page resets unless given."""
    request = context["request"]
    params = request.GET.copy()
    if "page" not in changes:
        params.pop("page", None)
    for key, value in changes.items():
        if value in (None, ""):
            params.pop(key, None)
        else:
            params[key] = value
    encoded = urlencode(sorted((k, v) for k, values in params.lists() for v in values))
    return f"?{encoded}" if encoded else "?"


@register.filter
def ago(value) -> str:
    """"3 hours ago" with one unit only (shorter than Django's two-unit ``timesince``)."""
    if not value:
        return ""
    from django.utils.timesince import timesince

    return f"{timesince(value, depth=1)} ago"


@register.filter
def display(value) -> str:
    """A stored value for people: lists joined, booleans as Yes/No, nothing as a dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, list | tuple):
        return ", ".join(display(v) for v in value) or "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {display(v)}" for k, v in value.items()) or "—"
    return str(value)
