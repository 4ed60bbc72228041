from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render

from loopline.accounts.decorators import member_required

from . import services
from .forms import CampaignForm
from .models import Campaign

CAMPAIGN_TYPES = ("Email", "Webinar", "Trade show", "Paid search", "Social", "Content", "Event", "Partner")


@member_required("campaigns.view")
def campaign_list(request):
    campaigns = Campaign.objects.filter(bu=request.access.bu).select_related("parent").order_by("-start_date", "name")
    status = request.GET.get("status", "")
    if status in Campaign.Status.values:
        campaigns = campaigns.filter(status=status)
    return render(request, "campaigns/list.html", {
        "campaigns": campaigns[:500], "statuses": Campaign.Status.choices, "current_status": status,
    })


def _campaign_form(request, campaign: Campaign | None):
    access = request.access
    form = CampaignForm(request.POST or None, instance=campaign, bu=access.bu)
    if request.method == "POST" and form.is_valid():
        try:
            saved = services.save_campaign(access, form.save(commit=False))
        except ValidationError as exc:
            for key, errors in exc.message_dict.items():
                form.add_error(key if key in form.fields else None, errors)
        else:
            messages.success(request, f"Campaign {saved.name} saved.")
            return redirect("campaigns:list")
    return render(request, "campaigns/form.html", {"form": form, "campaign": campaign, "types": CAMPAIGN_TYPES})


@member_required("campaigns.create")
def campaign_create(request):
    return _campaign_form(request, None)


@member_required("campaigns.edit")
def campaign_edit(request, pk: int):
    campaign = get_object_or_404(Campaign, pk=pk, bu=request.access.bu)
    return _campaign_form(request, campaign)
