from django.apps import AppConfig


class QualificationConfig(AppConfig):
    name = "loopline.qualification"
    label = "qualification"
    verbose_name = "Scoring and grading"

    def ready(self) -> None:
        from loopline.platform import events

        from . import services

        events.subscribe(events.ActivityRecorded, services.on_activity_recorded)
        events.subscribe(events.ProspectChanged, services.on_prospect_changed)
        events.subscribe(events.ProspectsBulkChanged, services.on_prospects_bulk_changed)
        events.subscribe(events.ProspectsMerged, services.on_prospects_merged)
        services.register_actions()
