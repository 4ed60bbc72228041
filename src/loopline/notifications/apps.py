from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "loopline.notifications"
    label = "notifications"
    verbose_name = "Notifications and webhooks"

    def ready(self) -> None:
        from loopline.platform import events

        from . import services, tasks, webhooks

        events.subscribe(events.ActivityRecorded, services.on_activity_recorded)
        events.subscribe(events.ProspectChanged, services.on_prospect_changed)
        events.subscribe(events.ProspectChanged, webhooks.on_prospect_changed)
        events.subscribe(events.ProspectsBulkChanged, webhooks.on_prospects_bulk_changed)
        events.subscribe(events.ProspectDeleted, webhooks.on_prospect_deleted)
        events.subscribe(events.ProspectsMerged, webhooks.on_prospects_merged)
        events.subscribe(events.ActivityRecorded, webhooks.on_activity_recorded)
        services.register_actions()
        tasks.register_schedules()
