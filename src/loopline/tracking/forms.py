from __future__ import annotations

from django import forms

from loopline.campaigns.models import Campaign

from .models import CustomRedirect, TrackedFile


class TrackerSettingsForm(forms.Form):
    require_consent = forms.BooleanField(required=False, label="Require opt-in before tracking",
                                         help_text="No cookie and no page views until the visitor allows tracking.")
    show_banner = forms.BooleanField(required=False, label="Show Loopline's opt-in banner",
                                     help_text="Off: call <code>loopline.consent(true)</code> from your own banner.")
    banner_text = forms.CharField(max_length=300, required=False, label="Banner text")
    allowed_origins = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}), label="Site origins",
        help_text="One per line, e.g. <code>https://www.example.com</code>. Only these may send hits and embed "
                  "forms. Empty: any origin.")


class _CampaignMixin:
    def __init__(self, *args, bu=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["campaign"].queryset = Campaign.objects.filter(bu=bu)
        self.fields["campaign"].required = False


class RedirectForm(_CampaignMixin, forms.ModelForm):
    class Meta:
        model = CustomRedirect
        fields = ["name", "destination", "campaign", "utm_source", "utm_medium", "utm_campaign", "utm_term",
                  "utm_content"]


class FileForm(_CampaignMixin, forms.ModelForm):
    upload = forms.FileField(required=False, label="File")

    class Meta:
        model = TrackedFile
        fields = ["name", "campaign"]
