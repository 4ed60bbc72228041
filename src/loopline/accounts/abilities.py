"""Abilities are module x action pairs ("prospects.edit"). Built-in roles are fixed sets of them ([M1])."""

from __future__ import annotations

MODULES = {
    "prospects": "Prospects",
    "visitors": "Visitors",
    "emails": "Emails (marketing)",
    "one_to_one_email": "1:1 email",
    "lists": "Lists",
    "forms": "Forms and landing pages",
    "automation": "Automation rules and programs",
    "scoring": "Scoring and grading",
    "campaigns": "Campaigns",
    "reports": "Reports",
    "import_export": "Import and export",
    "users": "Users and roles",
    "connector": "CRM connector",
    "settings": "Business unit settings",
    "recycle_bin": "Recycle bin",
}
ACTIONS = ("view", "create", "edit", "delete", "report")
ALL_ABILITIES = frozenset(f"{m}.{a}" for m in MODULES for a in ACTIONS)

MARKETING_MODULES = ("prospects", "visitors", "emails", "one_to_one_email", "lists", "forms", "automation",
                     "scoring", "campaigns", "reports", "import_export")


def _all(*modules: str) -> frozenset[str]:
    return frozenset(f"{m}.{a}" for m in modules for a in ACTIONS)


class BuiltinRole:
    ADMINISTRATOR = "administrator"
    MARKETING = "marketing"
    SALES_MANAGER = "sales_manager"
    SALES = "sales"


BUILTIN_ROLES: dict[str, dict] = {
    BuiltinRole.ADMINISTRATOR: {
        "name": "Administrator",
        "abilities": ALL_ABILITIES,
        "prospect_scope": "all",
    },
    BuiltinRole.MARKETING: {
        "name": "Marketing",
        "abilities": _all(*MARKETING_MODULES),
        "prospect_scope": "all",
    },
    BuiltinRole.SALES_MANAGER: {
        "name": "Sales Manager",
        "abilities": frozenset(
            {"prospects.view", "prospects.edit", "prospects.create", "visitors.view", "reports.view",
             "reports.report", "one_to_one_email.create", "one_to_one_email.view", "campaigns.view"}
        ),
        "prospect_scope": "all",
    },
    BuiltinRole.SALES: {
        "name": "Sales",
        "abilities": frozenset({"prospects.view", "prospects.edit", "one_to_one_email.create", "one_to_one_email.view"}),
        "prospect_scope": "assigned",
    },
}


def validate_abilities(abilities: list[str] | set[str]) -> list[str]:
    unknown = sorted(set(abilities) - ALL_ABILITIES)
    if unknown:
        raise ValueError(f"Unknown abilities: {', '.join(unknown)}")
    return sorted(set(abilities))
