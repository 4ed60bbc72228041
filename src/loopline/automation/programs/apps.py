from django.apps import AppConfig


class ProgramsConfig(AppConfig):
    name = "loopline.automation.programs"
    label = "programs"
    verbose_name = "Engagement programs and assignment"

    def ready(self) -> None:
        from . import services, tasks

        services.register_actions()  # assign_round_robin, assign_crm_queue (and the CRM assignment rule) [M22]
        services.connect()  # activities wake prospects waiting at trigger steps
        tasks.register_schedules()  # programs.tick: the engine, every few seconds
