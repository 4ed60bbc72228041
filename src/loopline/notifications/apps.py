from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "loopline.notifications"
    label = "notifications"
    verbose_name = "Notifications and webhooks"
