"""The criteria builder's form encoding: a rule tree <-> flat form inputs, and the edits its buttons make.

Every node has a path ("r", "r-0", "r-0-2"); its inputs are named ``c__<path>__<part>``. Buttons post
``builder_op=<verb>:<path>`` (add_rule, add_group, remove). Values are kept exactly as typed so a page that fails
validation shows the person's input again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loopline.prospects.models import ActivityType

from . import criteria

PREFIX = "c"
ROOT = "r"
ACTIVITY_PARTS = ("type", "asset_type", "asset_id", "url_contains", "days", "min_count")
OPPORTUNITY_PARTS = ("outcome", "stage", "min_amount", "days")
ASSET_TYPES = (("", "any asset"), ("form", "form"), ("form_handler", "form handler"), ("landing_page", "landing page"),
               ("email", "email"), ("custom_redirect", "custom redirect"), ("file", "file"), ("page", "page"))
LIST_LIKE_OPS = {"in", "not_in", "includes", "excludes"}


def _name(path: str, part: str) -> str:
    return f"{PREFIX}__{path}__{part}"


def _sort_key(path: str) -> tuple[int, ...]:
    return tuple(int(p) for p in path.split("-")[1:] if p.isdigit())


def tree_from_post(post: Mapping[str, Any]) -> dict:
    """The raw (unvalidated) tree the builder's inputs describe."""
    nodes: dict[str, dict] = {}
    for key in post:
        if key.startswith(f"{PREFIX}__") and key.endswith("__kind"):
            path = key[len(PREFIX) + 2:-len("__kind")]
            if path == ROOT or path.startswith(ROOT + "-"):
                nodes[path] = {"kind": post.get(key)}
    if ROOT not in nodes:
        return {"match": "all", "rules": []}
    built: dict[str, dict] = {}
    for path in sorted(nodes, key=_sort_key):
        if nodes[path]["kind"] == "group":
            match = post.get(_name(path, "match"), "all")
            built[path] = {"match": match if match in ("all", "any") else "all", "rules": []}
        else:
            field_key = str(post.get(_name(path, "field"), "") or "")
            rule: dict[str, Any] = {"field": field_key, "op": str(post.get(_name(path, "op"), "") or "")}
            if field_key in ("activity", "opportunity"):
                parts = ACTIVITY_PARTS if field_key == "activity" else OPPORTUNITY_PARTS
                rule["value"] = {part: str(post.get(_name(path, part), "") or "").strip() for part in parts}
            else:
                rule["value"] = str(post.get(_name(path, "value"), "") or "")
            built[path] = rule
    for path in sorted(built, key=_sort_key):
        if path == ROOT:
            continue
        parent = path.rsplit("-", 1)[0]
        if parent in built and "rules" in built[parent]:
            built[parent]["rules"].append(built[path])
    root = built.get(ROOT)
    return root if root and "rules" in root else {"match": "all", "rules": []}


def _find(tree: dict, path: str) -> tuple[dict | None, int | None, dict | None]:
    """(parent group, index in parent, node) for a path."""
    if path == ROOT:
        return None, None, tree
    parts = [int(p) for p in path.split("-")[1:]]
    parent, node = None, tree
    index = None
    for index in parts:
        rules = node.get("rules") if isinstance(node, dict) else None
        if not isinstance(rules, list) or not 0 <= index < len(rules):
            return None, None, None
        parent, node = node, rules[index]
    return parent, index, node


def apply_op(tree: dict, op: str, catalogue: dict[str, criteria.FieldDef]) -> dict:
    """Apply a builder button (``add_rule:r-0``, ``add_group:r``, ``remove:r-1``); unknown ops change nothing."""
    verb, _, path = op.partition(":")
    parent, index, node = _find(tree, path)
    if node is None:
        return tree
    if verb == "add_rule" and "rules" in node:
        node["rules"].append(default_rule(catalogue))
    elif verb == "add_group" and "rules" in node:
        node["rules"].append({"match": "any", "rules": [default_rule(catalogue)]})
    elif verb == "remove" and parent is not None and index is not None:
        parent["rules"].pop(index)
    return tree


def default_rule(catalogue: dict[str, criteria.FieldDef]) -> dict:
    return {"field": "", "op": "", "value": ""}


def _value_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def render_nodes(tree: Mapping, catalogue: dict[str, criteria.FieldDef], *, path: str = ROOT,
                 depth: int = 1) -> dict:
    """The nested structure the templates walk: groups with ``children``, rules with their choices."""
    if "rules" in tree:
        return {
            "is_group": True, "path": path, "match": tree.get("match", "all"), "depth": depth,
            "can_nest": depth < criteria.MAX_DEPTH, "is_root": path == ROOT,
            "children": [render_nodes(child, catalogue, path=f"{path}-{i}", depth=depth + 1)
                         for i, child in enumerate(tree.get("rules", [])) if isinstance(child, Mapping)],
        }
    field_key = str(tree.get("field", "") or "")
    fdef = catalogue.get(field_key)
    ops = fdef.ops if fdef else ()
    op = str(tree.get("op", "") or "")
    if fdef and op not in dict(ops):
        op = ops[0][0]
    value = tree.get("value")
    node: dict[str, Any] = {
        "is_group": False, "path": path, "field": field_key, "op": op, "ops": ops, "kind": fdef.kind if fdef else "",
        "needs_value": bool(fdef) and op not in criteria.NO_VALUE_OPS, "value": _value_text(value),
        "options": fdef.options if fdef else (), "list_like": op in LIST_LIKE_OPS,
        "missing_field": bool(field_key) and fdef is None,
    }
    if field_key == "activity":
        spec = value if isinstance(value, Mapping) else {}
        node["activity"] = {part: _value_text(spec.get(part, "")) for part in ACTIVITY_PARTS}
    if field_key == "opportunity":
        spec = value if isinstance(value, Mapping) else {}
        node["opportunity"] = {part: _value_text(spec.get(part, "")) for part in OPPORTUNITY_PARTS}
    return node


def field_groups(catalogue: dict[str, criteria.FieldDef]) -> list[tuple[str, list[criteria.FieldDef]]]:
    order = ["Prospect", "Score and grade", "Tags and lists", "Activities", "Assignment and CRM", "Custom fields"]
    groups: dict[str, list[criteria.FieldDef]] = {name: [] for name in order}
    for fdef in catalogue.values():
        groups.setdefault(fdef.group, []).append(fdef)
    return [(name, items) for name, items in groups.items() if items]


def builder_context(bu, tree: Mapping) -> dict:
    """Everything ``automation/_criteria_builder.html`` needs."""
    from loopline.accounts.models import User
    from loopline.campaigns.models import Campaign
    from loopline.campaigns.selectors import opportunity_stages

    from .models import ProspectList

    catalogue = criteria.field_catalogue(bu)
    if not isinstance(tree, Mapping) or "rules" not in tree:
        tree = {"match": "all", "rules": []}
    return {
        "root": render_nodes(tree, catalogue),
        "field_groups": field_groups(catalogue),
        "grades": criteria.GRADES,
        "bu_lists": list(ProspectList.objects.filter(bu_id=bu.pk).order_by("name").values_list("pk", "name")),
        "bu_users": [(u.pk, u.get_full_name() or u.email)
                     for u in User.objects.filter(memberships__bu_id=bu.pk).order_by("email")],
        "bu_campaigns": list(Campaign.objects.filter(bu_id=bu.pk).order_by("name").values_list("pk", "name")),
        "activity_types": [(v, label) for v, label in ActivityType.choices],
        "asset_types": ASSET_TYPES,
        "outcomes": list(criteria.OUTCOMES.items()),
        "opportunity_stages": opportunity_stages(bu.pk),
    }
