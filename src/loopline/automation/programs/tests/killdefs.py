"""Set-up and read-back for the SIGKILL test (run in subprocesses against an embedded data folder)."""

from __future__ import annotations

import json


def setup(n: int) -> str:
    """A running program over a static list of ``n`` prospects: step 1 adjusts the score (set-based) and moves the
    grade a third up (one prospect at a time, so a batch takes a while), step 2 tags, then the end."""
    from loopline.accounts import services as account_services
    from loopline.accounts.access import Access
    from loopline.automation import services as automation_services
    from loopline.automation.programs import services
    from loopline.automation.programs.models import ProgramStep
    from loopline.prospects import services as prospect_services

    bu = account_services.create_business_unit("Kill test")
    user = account_services.create_user("marketer@kill.test", password="x" * 20)
    account_services.set_membership(bu, user, "marketing")
    access = Access.for_user(user, bu)
    recipients = automation_services.save_list(access, {"name": "Everyone", "kind": "static"})
    ids = [prospect_services.create_prospect(bu, {"email": f"p{i}@kill.test"}).pk for i in range(n)]
    automation_services.add_to_list(bu, recipients, ids)
    program = services.create_program(access, {"name": "Nurture", "recipient_list_ids": [recipients.pk]})
    first = services.add_step(
        access,
        program,
        {
            "kind": "action",
            "config": {
                "actions": [{"type": "adjust_score", "points": 1}, {"type": "change_grade", "thirds": 1}]
            },
        },
    )
    second = services.add_step(
        access, program, {"kind": "action", "config": {"actions": [{"type": "add_tag", "tag": "nurtured"}]}}
    )
    end = services.add_step(access, program, {"kind": "end"})
    ProgramStep.objects.filter(pk=first.pk).update(next_step_id=second.pk)
    ProgramStep.objects.filter(pk=second.pk).update(next_step_id=end.pk)
    program.refresh_from_db()
    entered = services.start(access, program)["entered"]
    return json.dumps({"program": program.pk, "first": first.pk, "second": second.pk, "entered": entered})


def summary(program_id: int) -> str:
    from django.db.models import Count

    from loopline.automation.programs.models import ProgramMember, ProgramStepLog
    from loopline.prospects.models import Prospect, ProspectTag
    from loopline.qualification.models import ProspectGrading

    ids = list(ProgramMember.objects.filter(program_id=program_id).values_list("prospect_id", flat=True))
    return json.dumps(
        {
            "members": len(ids),
            "statuses": dict(
                ProgramMember.objects.filter(program_id=program_id)
                .values_list("status")
                .annotate(n=Count("id"))
                .order_by()
            ),
            "scores": dict(
                Prospect.objects.filter(pk__in=ids).values_list("score").annotate(n=Count("id")).order_by()
            ),
            "manual_thirds": dict(
                ProspectGrading.objects.filter(prospect_id__in=ids)
                .values_list("manual_thirds")
                .annotate(n=Count("prospect_id"))
                .order_by()
            ),
            "grades": dict(
                Prospect.objects.filter(pk__in=ids).values_list("grade").annotate(n=Count("id")).order_by()
            ),
            "tagged": ProspectTag.objects.filter(prospect_id__in=ids, tag__name="nurtured").count(),
            "ledger": {
                str(step): n
                for step, n in ProgramStepLog.objects.filter(program_id=program_id)
                .values_list("step_id")
                .annotate(n=Count("id"))
                .order_by()
            },
        }
    )
