from __future__ import annotations

from django import forms

from .models import Campaign


class CampaignForm(forms.ModelForm):
    class Meta:
        model = Campaign
        fields = ["name", "type", "status", "start_date", "end_date", "budgeted_cost", "actual_cost", "parent"]
        widgets = {"start_date": forms.DateInput(attrs={"type": "date"}),
                   "end_date": forms.DateInput(attrs={"type": "date"})}
        labels = {"parent": "Parent campaign"}

    def __init__(self, *args, bu, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance.bu = bu
        parents = Campaign.objects.filter(bu=bu).order_by("name")
        if self.instance.pk:
            parents = parents.exclude(pk=self.instance.pk)
        self.fields["parent"].queryset = parents
        self.fields["parent"].empty_label = "None"
        self.fields["type"].widget.attrs["list"] = "campaign-types"

    def clean(self):
        data = super().clean()
        start, end = data.get("start_date"), data.get("end_date")
        if start and end and end < start:
            self.add_error("end_date", "The end date is before the start date.")
        for name in ("budgeted_cost", "actual_cost"):
            if data.get(name) is not None and data[name] < 0:
                self.add_error(name, "A cost can't be negative.")
        return data
