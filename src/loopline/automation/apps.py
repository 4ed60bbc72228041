from django.apps import AppConfig


class AutomationConfig(AppConfig):
    name = "loopline.automation"
    label = "automation"
    verbose_name = "Lists and automation"

    def ready(self) -> None:
        from loopline.platform import events
        from loopline.platform.scheduler import register_schedule

        from . import services, tasks

        services.register_actions()
        events.subscribe(events.ProspectChanged, services.on_prospect_changed)
        events.subscribe(events.ProspectsBulkChanged, services.on_prospects_bulk_changed)
        events.subscribe(events.ActivityRecorded, services.on_activity_recorded)
        events.subscribe(events.ProspectDeleted, services.on_prospect_deleted)
        events.subscribe(events.ProspectsMerged, services.on_prospects_merged)
        # Conditions such as "in the last 30 days" change with time alone: rebuild dynamic lists regularly.
        register_schedule("automation.refresh_dynamic_lists", every=tasks.REFRESH_EVERY, task=tasks.refresh_dynamic_lists)
