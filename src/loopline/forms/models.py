"""Forms, form handlers and landing pages ([M5], [M9]-[M11])."""

from __future__ import annotations

from django.db import models

from loopline.tracking.models import new_key


class Form(models.Model):
    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="forms")
    name = models.CharField(max_length=120)
    key = models.CharField(max_length=32, unique=True, default=new_key)
    campaign = models.ForeignKey("campaigns.Campaign", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    submit_label = models.CharField(max_length=60, default="Submit")
    thank_you_content = models.TextField(blank=True, default="Thank you! We received your details.",
                                         help_text="Shown after a successful submission (plain text).")
    redirect_url = models.URLField(max_length=2000, blank=True,
                                   help_text="Send the visitor here after a successful submission instead.")
    captcha = models.BooleanField(default=False, help_text="Ask a simple arithmetic question.")
    actions = models.JSONField(default=list, blank=True)
    is_archived = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class FormField(models.Model):
    class Kind(models.TextChoices):
        TEXT = "text", "Text"
        EMAIL = "email", "Email"
        TEXTAREA = "textarea", "Paragraph"
        NUMBER = "number", "Number"
        DATE = "date", "Date"
        SELECT = "select", "Dropdown"
        CHECKBOX = "checkbox", "Checkbox"
        HIDDEN = "hidden", "Hidden"

    form = models.ForeignKey(Form, on_delete=models.CASCADE, related_name="fields")
    position = models.PositiveIntegerField(default=0)
    prospect_field = models.CharField(max_length=80, help_text="Standard field name or custom field api name.")
    label = models.CharField(max_length=120)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.TEXT)
    required = models.BooleanField(default=False)
    help_text = models.CharField(max_length=200, blank=True)
    default_value = models.CharField(max_length=255, blank=True, help_text="Value of a hidden field.")
    progressive = models.BooleanField(default=False, help_text="Ask only if the prospect's value is unknown.")
    choices = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["position", "id"]
        constraints = [models.UniqueConstraint(fields=["form", "prospect_field"], name="form_field_unique")]

    @property
    def input_name(self) -> str:
        return self.prospect_field.replace(".", "_")


class FormHandler(models.Model):
    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="form_handlers")
    name = models.CharField(max_length=120)
    key = models.CharField(max_length=32, unique=True, default=new_key)
    campaign = models.ForeignKey("campaigns.Campaign", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    success_url = models.URLField(max_length=2000)
    error_url = models.URLField(max_length=2000, blank=True)
    forward_url = models.URLField(max_length=2000, blank=True, help_text="Also POST the submitted data here.")
    kiosk = models.BooleanField(default=False, help_text="Kiosk mode: do not cookie or identify the poster.")
    mappings = models.JSONField(default=list, blank=True,
                                help_text='[{"name": "external field", "field": "prospect field", "required": true}]')
    actions = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class LandingPage(models.Model):
    class Layout(models.TextChoices):
        SIMPLE = "simple", "Simple (one column)"
        TWO_COLUMN = "two_column", "Two columns (content | form)"
        HERO = "hero", "Hero banner"

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="landing_pages")
    name = models.CharField(max_length=120)
    key = models.CharField(max_length=32, unique=True, default=new_key)
    title = models.CharField(max_length=200)
    layout = models.CharField(max_length=20, choices=Layout.choices, default=Layout.SIMPLE)
    blocks = models.JSONField(default=list, blank=True, help_text='[{"kind": "heading"|"text", "text": "..."}]')
    form = models.ForeignKey(Form, null=True, blank=True, on_delete=models.SET_NULL, related_name="landing_pages")
    campaign = models.ForeignKey("campaigns.Campaign", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    actions = models.JSONField(default=list, blank=True)
    is_published = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
