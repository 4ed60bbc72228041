from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect


@login_required
def home(request):
    return redirect("prospects:list")


@login_required
def prospect_list(request):
    return HttpResponse("prospects")
