"""update_prospect on an instance loaded before another writer's commit (the CRM connector's pull loads a batch of
prospects, a user edits one of them meanwhile): the other writer's change must survive ([R25]: no change lost)."""

from __future__ import annotations

from loopline.prospects import services
from loopline.prospects.models import Prospect


def test_stale_instance_does_not_write_back_old_values(bu):
    p = services.create_prospect(bu, {"email": "stale@example.test", "job_title": "CEO", "city": "Paris"})
    stale = Prospect.objects.get(pk=p.pk)  # e.g. loaded by a pull batch
    services.update_prospect(Prospect.objects.get(pk=p.pk), {"job_title": "CTO"})  # a user's edit commits
    services.update_prospect(stale, {"city": "Oslo"}, source="crm")  # the pull applies the CRM's change
    fresh = Prospect.objects.get(pk=p.pk)
    assert (fresh.job_title, fresh.city) == ("CTO", "Oslo")  # the user's edit is not reverted
    assert stale.job_title == "CTO"  # the instance reflects the committed row


def test_stale_instance_keeps_score_moved_elsewhere(bu):
    p = services.create_prospect(bu, {"email": "score@example.test"})
    stale = Prospect.objects.get(pk=p.pk)
    Prospect.objects.filter(pk=p.pk).update(score=42)  # scores move through F() updates
    services.update_prospect(stale, {"job_title": "VP"})
    assert Prospect.objects.get(pk=p.pk).score == 42
