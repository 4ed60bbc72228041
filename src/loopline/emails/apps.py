import datetime as dt

from django.apps import AppConfig


class EmailsConfig(AppConfig):
    name = "loopline.emails"
    label = "emails"
    verbose_name = "Email"

    def ready(self) -> None:
        from anymail.signals import tracking

        from loopline.platform import actions
        from loopline.platform.scheduler import register_schedule

        from . import bounces
        from .actions import send_autoresponder_action
        from .tasks import start_due_sends

        tracking.connect(bounces.on_anymail_tracking, dispatch_uid="loopline.emails.anymail")
        actions.register(send_autoresponder_action)
        # Starts scheduled sends and resumes sends whose worker died (its leases run out, the rows are claimed again).
        register_schedule("emails.start_due_sends", every=dt.timedelta(minutes=1), task=start_due_sends)
        _add_mail_catcher_child()


def _add_mail_catcher_child() -> None:
    """In embedded mode ``loopline run`` also runs the demo inbox + bounce mailbox (the default SMTP target)."""
    from django.conf import settings

    if getattr(settings, "TESTING", False) or getattr(settings, "PROFILE", "") != "embedded":
        return
    mailer = settings.MAILERS.get("default", {}) if hasattr(settings, "MAILERS") else {}
    host = (mailer.get("OPTIONS") or {}).get("host", "")
    if not str(mailer.get("BACKEND", "")).endswith("smtp.EmailBackend") or host not in ("127.0.0.1", "localhost"):
        return
    from loopline.platform.management.commands.run import EXTRA_CHILDREN, ChildSpec

    if not any(spec.name == "mail-catcher" for spec in EXTRA_CHILDREN):
        EXTRA_CHILDREN.append(ChildSpec("mail-catcher", ["loopline", "mail-catcher"]))
