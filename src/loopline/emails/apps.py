from django.apps import AppConfig


class EmailsConfig(AppConfig):
    name = "loopline.emails"
    label = "emails"
    verbose_name = "Email"
