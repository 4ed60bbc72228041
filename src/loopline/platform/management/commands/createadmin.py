"""``loopline createadmin --email E [--password P] [--bu NAME]``: an administrator login, printed."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email


class Command(BaseCommand):
    help = "Create or update a user and make them Administrator of a business unit (created if missing)."

    def add_arguments(self, parser):
        parser.add_argument("--email", required=True)
        parser.add_argument(
            "--password",
            default=None,
            help="Set this password (default: generate one for a new user, keep an existing user's).",
        )
        parser.add_argument(
            "--bu", default=None, help="Business unit name (default: the only one, or a new 'Default')."
        )
        parser.add_argument("--first-name", default="")
        parser.add_argument("--last-name", default="")

    def handle(self, *args, **opts):
        from django.contrib.auth.password_validation import validate_password

        from loopline.platform.demo import ensure_admin

        email = opts["email"].strip().lower()
        try:
            validate_email(email)
        except ValidationError:
            raise CommandError(f"'{opts['email']}' is not a valid email address") from None
        if opts["password"]:
            try:
                validate_password(opts["password"])
            except ValidationError as exc:
                raise CommandError("Password rejected: " + " ".join(exc.messages)) from None
        try:
            login = ensure_admin(
                email,
                password=opts["password"],
                bu_name=opts["bu"],
                first_name=opts["first_name"],
                last_name=opts["last_name"],
            )
        except (ValueError, ValidationError) as exc:
            raise CommandError(str(exc)) from None
        verb = "Created" if login.created else "Updated"
        self.stdout.write(f"{verb} administrator of business unit '{login.bu.name}'")
        self.stdout.write(f"  email:    {login.email}")
        self.stdout.write(f"  password: {login.password if login.password else '(unchanged)'}")
