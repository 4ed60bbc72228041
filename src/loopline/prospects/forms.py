"""Forms of the prospect pages. They only collect raw input; validation is ``services`` / ``fields.clean_value``."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.text import slugify

from .fields import FieldSpec
from .models import CustomField

# Standard fields grouped into the sections of the create/edit form.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Contact", ("email", "salutation", "first_name", "last_name", "job_title", "department", "phone", "fax")),
    ("Company", ("company", "website", "industry", "annual_revenue", "employees")),
    ("Address", ("address_one", "address_two", "city", "state", "zip", "country")),
    ("Other", ("source", "comments")),
    ("Preferences", ("opted_out", "do_not_email", "do_not_call", "starred", "reviewed")),
)


def form_name(spec: FieldSpec) -> str:
    """HTML/form field name of a spec: custom fields are ``custom__<api_name>``."""
    return f"custom__{spec.key}" if spec.custom else spec.name


def _field_for(spec: FieldSpec) -> forms.Field:
    common: dict[str, Any] = {"label": spec.label, "required": False}
    attrs: dict[str, object] = {}
    if spec.required:
        attrs["aria-required"] = "true"
    if spec.type == "checkbox":
        return forms.BooleanField(**common)
    if spec.type == "multiselect":
        return forms.MultipleChoiceField(choices=[(o, o) for o in spec.options],
                                         widget=forms.CheckboxSelectMultiple, **common)
    if spec.type == "dropdown":
        return forms.CharField(widget=forms.Select(choices=[("", "—"), *((o, o) for o in spec.options)], attrs=attrs),
                               **common)
    if spec.type == "longtext":
        return forms.CharField(widget=forms.Textarea(attrs={"rows": 3, **attrs}), **common)
    if spec.type == "date":
        return forms.CharField(widget=forms.DateInput(attrs={"type": "date", **attrs}), help_text="YYYY-MM-DD",
                               **common)
    if spec.type in ("number", "decimal"):
        # A text box, so whatever the person typed comes back with the error message.
        return forms.CharField(widget=forms.TextInput(attrs={"inputmode": "decimal", **attrs}), **common)
    if spec.type == "email":
        return forms.CharField(widget=forms.EmailInput(attrs={"autocomplete": "off", **attrs}), **common)
    if spec.max_length:
        attrs["maxlength"] = spec.max_length
    return forms.CharField(widget=forms.TextInput(attrs=attrs), **common)


class ProspectForm(forms.Form):
    """Built from ``fields.field_specs(bu)``: every standard field plus the BU's custom fields."""

    def __init__(self, *args, specs: list[FieldSpec], users=None, campaigns=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.specs = {form_name(s): s for s in specs}
        for name, spec in self.specs.items():
            self.fields[name] = _field_for(spec)
            # Read by _field.html to mark the field; the service, not the form, enforces it.
            setattr(self.fields[name], "show_required", spec.required or name == "email")  # noqa: B010
        if users is not None:
            self.fields["assigned_user"] = forms.ModelChoiceField(
                queryset=users, required=False, label="Assigned user", empty_label="Unassigned")
        if campaigns is not None:
            self.fields["source_campaign"] = forms.ModelChoiceField(
                queryset=campaigns, required=False, label="Source campaign", empty_label="None")

    @staticmethod
    def initial_for(prospect, specs: list[FieldSpec]) -> dict:
        initial: dict = {}
        for spec in specs:
            value = (prospect.custom or {}).get(spec.key) if spec.custom else getattr(prospect, spec.name)
            initial[form_name(spec)] = "" if value is None else value
        initial["assigned_user"] = prospect.assigned_user_id
        initial["source_campaign"] = prospect.source_campaign_id
        return initial

    def service_data(self) -> dict:
        """Field values keyed the way ``services.create_prospect/update_prospect`` expect them."""
        data = {}
        for name, spec in self.specs.items():
            value = self.cleaned_data.get(name)
            if spec.type == "multiselect":
                value = list(value or [])
            elif spec.type == "checkbox":
                value = bool(value)
            data[spec.name] = value if value is not None else ""
        return data

    def add_service_errors(self, errors: dict[str, list[str]]) -> None:
        """Attach ``ProspectValidationError.errors`` to the matching fields (keys may be "custom.x" or "x")."""
        by_key = {spec.key: name for name, spec in self.specs.items()}
        by_key.update({spec.name: name for name, spec in self.specs.items()})
        for key, messages in errors.items():
            target = by_key.get(key) or by_key.get(key.removeprefix("custom."))
            for message in messages:
                self.add_error(target, message)

    def sections(self):
        """(title, [bound fields]) in display order; custom fields last."""
        out = []
        for title, names in SECTIONS:
            out.append((title, [self[n] for n in names if n in self.fields]))
        custom = [self[n] for n, s in self.specs.items() if s.custom]
        if custom:
            out.append(("Custom fields", custom))
        extra = [self[n] for n in ("assigned_user", "source_campaign") if n in self.fields]
        if extra:
            out.insert(1, ("Ownership and source", extra))
        return out


class TagForm(forms.Form):
    name = forms.CharField(max_length=80, label="Add a tag")


class CustomFieldForm(forms.Form):
    name = forms.CharField(max_length=80, label="Label", help_text="What people see on forms and pages.")
    api_name = forms.SlugField(max_length=60, required=False, label="API name",
                               help_text="Used in imports, the API and merge fields. Leave empty to derive it from "
                                         "the label. It can't be changed later.")
    type = forms.ChoiceField(choices=CustomField.Type.choices)
    options = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False, label="Choices",
                              help_text="For dropdown and multi-select fields: one choice per line.")
    required = forms.BooleanField(required=False, label="Required on the prospect form")
    max_length = forms.IntegerField(min_value=1, max_value=65535, required=False, label="Maximum length (text)")
    min_value = forms.DecimalField(required=False, label="Minimum (number)")
    max_value = forms.DecimalField(required=False, label="Maximum (number)")
    pattern = forms.CharField(max_length=200, required=False, label="Format (regular expression, text)",
                              help_text=r"Optional, e.g. <code>[A-Z]{2}\d{4}</code>.")
    default_merge_value = forms.CharField(max_length=255, required=False, label="Default merge value",
                                          help_text="Used in emails when a prospect has no value.")

    def __init__(self, *args, editing: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.editing = editing
        if editing:
            for name in ("api_name", "type"):
                self.fields[name].disabled = True
                self.fields[name].help_text = "Fixed once the field exists, so stored values keep their meaning."

    def service_data(self) -> dict:
        data = dict(self.cleaned_data)
        data["options"] = [line.strip() for line in (data.get("options") or "").splitlines() if line.strip()]
        if self.editing:
            data.pop("api_name", None)
            data.pop("type", None)
        else:
            data["api_name"] = data.get("api_name") or slugify(data["name"]).replace("-", "_")[:60]
        return data
