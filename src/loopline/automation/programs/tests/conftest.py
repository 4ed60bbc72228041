from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone


@pytest.fixture
def make_prospects(bu):
    from loopline.prospects import services as prospect_services

    def make(n: int, *, target_bu=None, prefix: str = "p", **extra):
        return [prospect_services.create_prospect(target_bu or bu, {"email": f"{prefix}{i}@example.test"},
                                                  extra=extra or None)
                for i in range(n)]

    return make


@pytest.fixture
def build(marketing_access):
    """Build a program from a list of step dicts; ``next``/``yes``/``no`` name other steps by index (None: end)."""
    from loopline.automation.programs import services
    from loopline.automation.programs.models import Program, ProgramStep

    def make(steps: list[dict], *, name: str = "Nurture", **program_fields) -> tuple[Program, list[ProgramStep]]:
        program = services.create_program(marketing_access, {"name": name})
        if program_fields:
            Program.objects.filter(pk=program.pk).update(**program_fields)
            program.refresh_from_db()
        created = []
        for data in steps:
            data = {k: v for k, v in data.items() if k not in ("next", "yes", "no")}
            created.append(services.add_step(marketing_access, program, data))
        for step, data in zip(created, steps, strict=True):
            links = {}
            for key in ("next", "yes", "no"):  # absent: end of the program
                target = data.get(key)
                links[f"{key}_step_id"] = created[target].pk if target is not None else None
            ProgramStep.objects.filter(pk=step.pk).update(**links)
        for s in created:
            s.refresh_from_db()
        program.refresh_from_db()
        return program, created

    return make


@pytest.fixture
def run(marketing_access):
    """Start (directly, no lists needed) and run a program's due steps."""
    from loopline.automation.programs import runner
    from loopline.automation.programs.models import Program

    def go(program, **kwargs):
        Program.objects.filter(pk=program.pk, status=Program.Status.DRAFT).update(status=Program.Status.RUNNING)
        return runner.run_due(sync=False, **kwargs)

    return go


def make_due(program, **filters):
    from loopline.automation.programs.models import ProgramMember

    ProgramMember.objects.filter(program=program, **filters).update(
        next_run_at=timezone.now() - dt.timedelta(seconds=1), locked_until=None)
