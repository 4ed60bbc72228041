"""Forms of the CRM connector admin pages. Plain-language labels and help: admins are not all Salesforce experts."""

from __future__ import annotations

from django import forms

from loopline.accounts.selectors import roles_for
from loopline.prospects.models import CustomField

from .models import FieldMapping
from .services import DEFAULT_SETTINGS


class ConnectionForm(forms.Form):
    login_url = forms.URLField(
        label="Login URL", max_length=300,
        help_text="Where Loopline asks for access tokens: <code>https://login.salesforce.com</code> for production, "
                  "<code>https://test.salesforce.com</code> for a Salesforce sandbox, or the <code>login_url</code> "
                  "printed by <code>crmsandbox info</code>.")
    consumer_key = forms.CharField(
        label="Consumer key", max_length=300,
        help_text="The connected app's consumer key (Salesforce: App Manager → your app → View → Manage Consumer "
                  "Details). For the sandbox: the <code>consumer_key</code> printed by <code>crmsandbox apps add</code>.")
    username = forms.CharField(
        label="Connector username", max_length=255,
        help_text="The CRM user Loopline acts as. Use the integration user so every record syncs; a named user only "
                  "syncs the records that user can see. Changes Loopline writes show this user as the author.")
    api_version = forms.RegexField(
        label="API version", regex=r"^\d{2,3}\.0$", initial="59.0", max_length=8,
        error_messages={"invalid": "Enter an API version like 59.0"},
        help_text="The Salesforce REST API version to use, e.g. 59.0.")
    ca_file = forms.CharField(
        label="Extra CA file (sandbox only)", max_length=500, required=False,
        help_text="Path on the Loopline server to a CA certificate to trust, for the development sandbox's "
                  "self-signed certificate (<code>ca_file</code> from <code>crmsandbox info</code>). Leave empty "
                  "for real Salesforce orgs.")

    def clean_login_url(self):
        value = self.cleaned_data["login_url"].strip().rstrip("/")
        if not value.startswith("https://"):
            raise forms.ValidationError("The login URL must start with https://")
        return value


SETTING_HELP: dict[str, tuple[str, str]] = {
    "auto_create_prospects": (
        "Create prospects automatically from new CRM leads and contacts",
        "When a lead or contact with an email is created in the CRM, Loopline creates a prospect for it. Records "
        "without an email are skipped until they get one. Not retroactive: use the initial import for existing "
        "records."),
    "update_email_from_crm": (
        "Update the prospect's email when it changes in the CRM",
        "Unique-email matching only. When off, a prospect stops syncing with a record whose email changed; its next "
        "change creates a new CRM record."),
    "blank_crm_values_overwrite": (
        "Blank CRM values clear Loopline values",
        "Normally an empty value never overwrites a filled one. Turn this on if clearing a field in the CRM should "
        "also clear it in Loopline."),
    "match_by_email_when_no_crm_id": (
        "Match by email when a prospect has no CRM id yet",
        "CRM-id matching only: a prospect without a CRM id links to the most recently modified CRM record with its "
        "email instead of creating a new one."),
    "new_record_object": (
        "What a new prospect creates in the CRM",
        "Assigned prospects with no matching CRM record create this kind of record."),
    "sync_person_accounts": (
        "Sync person accounts",
        "For CRMs with person accounts: a person account syncs with one prospect (its email, owner and person "
        "contact). Costs one more query per check for changes. Always on when new prospects create person "
        "accounts."),
    "poll_interval_seconds": (
        "Check the CRM for changes every (seconds)",
        "The starting interval. Loopline checks more often when busy and slows down when nothing changes."),
    "max_poll_interval_seconds": (
        "Slowest check interval (seconds)",
        "When the CRM is quiet, Loopline slows down up to this interval."),
    "api_share_percent": (
        "Share of the CRM's daily API calls Loopline may use (%)",
        "At 70% of this share Loopline polls less often, at 90% it defers large jobs, and when the CRM says the "
        "daily limit is reached it waits for the window to roll over — queued changes are kept."),
    "bulk_threshold": (
        "Use bulk loading above this many queued changes",
        "Large backlogs are sent with the Bulk API, which uses far fewer API calls."),
    "score_field": (
        "CRM field for the prospect score",
        "API name of a number field on Lead and Contact (e.g. <code>Loopline_Score__c</code>). Loopline writes it; "
        "the CRM side is read-only. Leave empty to not send the score."),
    "grade_field": (
        "CRM field for the prospect grade",
        "API name of a text field (e.g. <code>Loopline_Grade__c</code>). Leave empty to not send the grade."),
    "campaign_field": (
        "CRM field for the prospect's campaign",
        "API name of a text field (e.g. <code>Loopline_Campaign__c</code>). Leave empty to not send it."),
    "log_email_tasks": (
        "Log emails sent to synced prospects as completed CRM tasks",
        "Each marketing email sent to a synced prospect appears on the CRM record's activity history."),
    "external_id_field": (
        "CRM external-id field for new records",
        "API name of a unique external-id text field on Lead and Contact (e.g. <code>Loopline_Id__c</code>, 64 "
        "characters). When the CRM has it, Loopline stamps every record it creates with it, so a create retried "
        "after a network failure can never make a second record — even for prospects without an email. Leave "
        "empty, or do not create the field, to create records without it."),
}

NEW_RECORD_CHOICES = [("Lead", "Lead"), ("Contact", "Contact"), ("PersonAccount", "Person account")]
_FIELD_NAME = r"^$|^[A-Za-z][A-Za-z0-9_]*$"


class SettingsForm(forms.Form):
    """Built from :data:`DEFAULT_SETTINGS`, so a new setting shows up here with a sensible widget."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, default in DEFAULT_SETTINGS.items():
            label, help_text = SETTING_HELP.get(key, (key.replace("_", " ").capitalize(), ""))
            field: forms.Field
            if isinstance(default, bool):
                field = forms.BooleanField(required=False)
            elif isinstance(default, int):
                field = forms.IntegerField(min_value=0 if key != "api_share_percent" else 1,
                                           max_value=100 if key == "api_share_percent" else None)
            elif key == "new_record_object":
                field = forms.ChoiceField(choices=NEW_RECORD_CHOICES)
            else:
                field = forms.RegexField(regex=_FIELD_NAME, required=False, max_length=80, error_messages={
                    "invalid": "Enter a CRM field API name such as Loopline_Score__c"})
            field.label, field.help_text = label, help_text
            self.fields[key] = field

    def clean(self):
        cleaned = super().clean()
        low, high = cleaned.get("poll_interval_seconds"), cleaned.get("max_poll_interval_seconds")
        if low is not None and low < 1:
            self.add_error("poll_interval_seconds", "Check at least every second (1 or more).")
        if low is not None and high is not None and high < low:
            self.add_error("max_poll_interval_seconds", "The slowest interval can't be shorter than the first one.")
        return cleaned


class BehaviourForm(forms.Form):
    behaviour = forms.ChoiceField(choices=FieldMapping.Behaviour.choices)


class CustomMappingForm(forms.Form):
    custom_field = forms.ModelChoiceField(queryset=CustomField.objects.none(), label="Loopline custom field",
                                          empty_label="Choose a field…")
    lead_field = forms.ChoiceField(label="Lead field", required=False)
    contact_field = forms.ChoiceField(label="Contact field", required=False)
    person_account_field = forms.ChoiceField(label="Person account field", required=False)
    behaviour = forms.ChoiceField(
        label="When both sides changed",
        choices=[c for c in FieldMapping.Behaviour.choices if c[0] != FieldMapping.Behaviour.MOST_RECENT_FIELD],
        initial=FieldMapping.Behaviour.USE_CRM)

    def __init__(self, *args, bu, choices: dict[str, list[dict]], **kwargs):
        super().__init__(*args, **kwargs)
        custom_field = self.fields["custom_field"]
        assert isinstance(custom_field, forms.ModelChoiceField)
        custom_field.queryset = CustomField.objects.filter(bu=bu).order_by("name")
        for column, object_type in (("lead_field", "Lead"), ("contact_field", "Contact"),
                                    ("person_account_field", "PersonAccount")):
            options = [("", "— not mapped —")] + [
                (c["name"], f"{c['label']} ({c['name']}, {c['type']}{', ' + str(c['length']) if c['length'] else ''})")
                for c in choices.get(object_type, [])]
            field = self.fields[column]
            assert isinstance(field, forms.ChoiceField)
            field.choices = options

    def clean(self):
        cleaned = super().clean()
        if not any(cleaned.get(c) for c in ("lead_field", "contact_field", "person_account_field")):
            raise forms.ValidationError("Choose a CRM field on at least one object.")
        return cleaned


class ProfileRoleForm(forms.Form):
    """One select per CRM profile seen in User Sync: which Loopline role its users get ("" = don't sync)."""

    def __init__(self, *args, bu, profiles: list[str], current: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        choices = [("", "Don't create Loopline users")]
        for role in roles_for(bu).order_by("bu_id", "name"):
            value = role.key if role.is_builtin else str(role.pk)
            choices.append((value, role.name + ("" if role.is_builtin else " (custom)")))
        self.profiles = profiles
        for i, profile in enumerate(profiles):
            self.fields[f"profile_{i}"] = forms.ChoiceField(choices=choices, required=False, label=profile,
                                                            initial=current.get(profile, ""))

    def mapping(self) -> dict[str, str]:
        return {profile: self.cleaned_data.get(f"profile_{i}") or "" for i, profile in enumerate(self.profiles)}


class SharingRulesForm(forms.Form):
    """Marketing data sharing rules ([R35]): per object one unmapped CRM field that must equal a value."""

    OBJECTS = (("Lead", "Leads"), ("Contact", "Contacts"), ("Opportunity", "Opportunities"))

    def __init__(self, *args, rules: dict[str, dict[str, str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        for object_type, plural in self.OBJECTS:
            rule = (rules or {}).get(object_type) or {}
            key = object_type.lower()
            self.fields[f"{key}_field"] = forms.RegexField(
                regex=_FIELD_NAME, required=False, max_length=80, initial=rule.get("field", ""),
                label=f"{plural}: CRM field",
                error_messages={"invalid": "Enter a CRM field API name such as BU__c"},
                help_text="API name of a field not mapped to a prospect field (e.g. <code>Business_Unit__c</code>).")
            self.fields[f"{key}_value"] = forms.CharField(
                required=False, max_length=255, strip=False, initial=rule.get("value", ""),
                label=f"{plural}: must equal",
                help_text="The exact value (upper and lower case count). Records created by the connector user "
                          "always match.")

    def rules(self) -> dict[str, dict[str, str]]:
        out = {}
        for object_type, _ in self.OBJECTS:
            key = object_type.lower()
            field, value = self.cleaned_data.get(f"{key}_field") or "", self.cleaned_data.get(f"{key}_value") or ""
            if field or value:
                out[object_type] = {"field": field.strip(), "value": value}
        return out
