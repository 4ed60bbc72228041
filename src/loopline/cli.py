"""The ``loopline`` command: Django's management commands plus Loopline's own (run, createadmin, import, ...)."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopline.config.settings")
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(["loopline", *(sys.argv[1:] if argv is None else argv)])
    except KeyboardInterrupt:  # Ctrl-C: stop quietly, without a traceback
        sys.exit(130)


if __name__ == "__main__":
    main()
