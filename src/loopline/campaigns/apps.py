from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "loopline.campaigns"
    label = "campaigns"
    verbose_name = "Campaigns"

    def ready(self) -> None:
        from loopline.platform import events

        from . import services, tasks

        events.subscribe(events.ProspectChanged, services.on_prospect_changed)
        events.subscribe(events.ProspectsBulkChanged, services.on_prospects_bulk_changed)
        events.subscribe(events.ActivityRecorded, services.on_activity_recorded)
        events.subscribe(events.ProspectsMerged, services.on_prospects_merged)  # memberships move ([R32])
        services.register_actions()  # add_to_campaign creates a membership ([M33])
        tasks.register_schedules()
