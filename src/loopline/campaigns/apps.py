from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "loopline.campaigns"
    label = "campaigns"
    verbose_name = "Campaigns"
