from __future__ import annotations

from django import forms

from loopline.campaigns.models import Campaign

from .models import Form, FormHandler, LandingPage


class _BuMixin:
    def __init__(self, *args, bu=None, **kwargs):
        super().__init__(*args, **kwargs)
        if "campaign" in self.fields:
            self.fields["campaign"].queryset = Campaign.objects.filter(bu=bu)
            self.fields["campaign"].required = False
        if "form" in self.fields:
            self.fields["form"].queryset = Form.objects.filter(bu=bu, is_archived=False)
            self.fields["form"].required = False


class FormSettingsForm(_BuMixin, forms.ModelForm):
    class Meta:
        model = Form
        fields = ["name", "campaign", "submit_label", "thank_you_content", "redirect_url", "captcha"]
        widgets = {"thank_you_content": forms.Textarea(attrs={"rows": 3})}


class FormHandlerForm(_BuMixin, forms.ModelForm):
    mappings_text = forms.CharField(
        label="Field mappings", widget=forms.Textarea(attrs={"rows": 5}),
        help_text="One per line: <code>external name = prospect field</code>, add <code>*</code> for required, "
                  "e.g. <code>your-email = email *</code>")

    class Meta:
        model = FormHandler
        fields = ["name", "campaign", "success_url", "error_url", "forward_url", "kiosk"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance and self.instance.pk and not self.is_bound:
            self.initial["mappings_text"] = "\n".join(
                f"{m['name']} = {m['field']}{' *' if m.get('required') else ''}" for m in self.instance.mappings)

    def mappings(self) -> list[dict]:
        result = []
        for line in self.cleaned_data["mappings_text"].splitlines():
            if not line.strip():
                continue
            name, _, target = line.partition("=")
            required = target.strip().endswith("*")
            result.append({"name": name.strip(), "field": target.strip().rstrip("*").strip(), "required": required})
        return result


class LandingPageForm(_BuMixin, forms.ModelForm):
    blocks_text = forms.CharField(
        label="Content", required=False, widget=forms.Textarea(attrs={"rows": 8}),
        help_text="Paragraphs separated by a blank line. A line starting with <code>#</code> is a heading.")

    class Meta:
        model = LandingPage
        fields = ["name", "title", "layout", "form", "campaign", "is_published"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance and self.instance.pk and not self.is_bound:
            self.initial["blocks_text"] = "\n\n".join(
                ("# " if b["kind"] == "heading" else "") + b["text"] for b in self.instance.blocks)

    def blocks(self) -> list[dict]:
        blocks = []
        for chunk in self.cleaned_data.get("blocks_text", "").replace("\r\n", "\n").split("\n\n"):
            chunk = chunk.strip()
            if chunk.startswith("#"):
                blocks.append({"kind": "heading", "text": chunk.lstrip("#").strip()})
            elif chunk:
                blocks.append({"kind": "text", "text": chunk})
        return blocks


