from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "loopline.accounts"
    label = "accounts"
    verbose_name = "Business units and users"
