"""``loopline run``: Loopline on one machine, as one supervised group of processes.

Migrates, makes sure the Demo business unit exists, prints the address and the admin login, then starts and watches
the web server, the background worker and the scheduler (plus any extra children, see ``EXTRA_CHILDREN``). A child
that exits is restarted with a growing delay. Ctrl-C or SIGTERM stops every child cleanly.

Each child leads its own process group under the supervisor: the terminal's Ctrl-C reaches only the supervisor, which
stops each child *and its own sub-processes* (granian's or Celery's workers) with one SIGTERM to that group, then
SIGKILL after ``--stop-timeout``. (Granian hangs on shutdown when a terminal's SIGINT reaches its worker processes
directly, and a task worker interrupted twice abandons its task.) On Linux each child also gets SIGTERM from the
kernel if the supervisor itself dies, so nothing is left running.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections


@dataclass
class ChildSpec:
    """A process ``loopline run`` starts and keeps alive. ``argv[0]`` may be ``"loopline"`` (this Python's CLI)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


# Hook for more children, e.g. the CRM sandbox or an SMTP catcher:
#     EXTRA_CHILDREN.append(ChildSpec("crm-sandbox", ["crmsandbox", "serve", "--port", "8443"]))
# (append from an AppConfig.ready()), or list them in settings.LOOPLINE_RUN_EXTRA_CHILDREN as
# [{"name": ..., "argv": [...], "env": {...}}].
EXTRA_CHILDREN: list[ChildSpec] = []

QUICK_EXIT_SECONDS = 30.0
MAX_RESTART_DELAY = 30.0


class Child:
    def __init__(self, spec: ChildSpec, out):
        self.spec = spec
        self.out = out
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.failures = 0
        self.next_start = 0.0

    def argv(self) -> list[str]:
        argv = list(self.spec.argv)
        if argv and argv[0] == "loopline":
            argv = [sys.executable, "-m", "loopline", *argv[1:]]
        elif argv and argv[0] == "crmsandbox":
            argv = [sys.executable, "-m", "crmsandbox", *argv[1:]]
        return argv

    def start(self) -> None:
        env = {**os.environ, **self.spec.env}
        self.proc = subprocess.Popen(  # preexec_fn only calls prctl; no threads run here
            self.argv(), env=env, stdin=subprocess.DEVNULL, process_group=0, preexec_fn=_die_with_parent
        )
        self.started_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Signal the child's whole process group (the child and any processes it started)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


def _die_with_parent() -> None:
    """Linux: if the supervisor dies (even by SIGKILL), the kernel sends this child SIGTERM."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def web_server_argv(host: str, port: int, workers: int, threads: int) -> tuple[str, list[str]]:
    if importlib.util.find_spec("granian") is not None:
        return "granian", [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "wsgi",
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--blocking-threads",
            str(threads),
            "--no-ws",
            "--workers-kill-timeout",
            "15",
            "loopline.config.wsgi:application",
        ]
    # Fallback: Django's own server (single process, threaded). Fine for a demo, not for production.
    return "django runserver", [sys.executable, "-m", "loopline", "runserver", f"{host}:{port}", "--noreload"]


def extra_children() -> list[ChildSpec]:
    specs = list(EXTRA_CHILDREN)
    for item in getattr(settings, "LOOPLINE_RUN_EXTRA_CHILDREN", []) or []:
        specs.append(ChildSpec(name=item["name"], argv=list(item["argv"]), env=dict(item.get("env", {}))))
    return specs


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host  # noqa: S104
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((target, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class Command(BaseCommand):
    help = "Run Loopline: web server, background worker and scheduler, supervised, with a demo business unit."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-demo", action="store_true", help="Do not create the Demo business unit.")
        parser.add_argument("--web-workers", type=int, default=1, help="Web server processes (default: 1).")
        parser.add_argument(
            "--web-threads", type=int, default=4, help="Threads per web process (default: 4)."
        )
        parser.add_argument("--no-worker", action="store_true", help="Do not start a background worker.")
        parser.add_argument("--no-scheduler", action="store_true", help="Do not start the scheduler.")
        parser.add_argument(
            "--no-crm-sandbox", action="store_true", help="Do not start the demo CRM (crmsandbox) next to Loopline."
        )
        parser.add_argument("--crm-port", type=int, default=8443, help="HTTPS port of the demo CRM (default: 8443).")
        parser.add_argument("--demo-site-port", type=int, default=8001, help="Port of the demo website (default: 8001).")
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=20.0,
            help="Seconds children get to finish their work when stopping (default: 20).",
        )

    def handle(self, *args, **opts):
        host, port = opts["host"], opts["port"]
        if not port_free(host, port):
            raise CommandError(
                f"Port {port} on {host} is already in use. Stop the other server or use --port."
            )

        self.stdout.write(f"Loopline ({settings.PROFILE} mode) — data in {settings.DATA_DIR}")
        self.stdout.write("Applying database migrations…")
        call_command("migrate", interactive=False, verbosity=0)
        if settings.STATIC_ROOT:
            os.makedirs(settings.STATIC_ROOT, exist_ok=True)
        if not getattr(settings, "WHITENOISE_USE_FINDERS", False):
            self.stdout.write("Collecting static files…")
            call_command("collectstatic", interactive=False, verbosity=0)

        login_lines = self.ensure_demo(opts["no_demo"])
        specs = self.child_specs(host, port, opts)
        demo_crm = None
        if not opts["no_demo"] and not opts["no_crm_sandbox"]:
            demo_crm = self.ensure_demo_crm(opts["crm_port"])
            if demo_crm is not None:
                specs.append(ChildSpec("crm-sandbox", demo_crm.serve_argv))
        connections.close_all()

        supervisor = Supervisor(specs, self.stdout, self.stderr, stop_timeout=opts["stop_timeout"])
        # The web server first, so the address works as soon as possible; the others start once it listens.
        supervisor.start_all(only=specs[:1])
        ready = wait_for_port(host, port, timeout=30)
        supervisor.start_all(only=specs[1:])
        if ready:
            scheme_host = f"[{host}]" if ":" in host else host
            self.stdout.write("")
            self.stdout.write(self.style.SUCCESS(f"Loopline is running at http://{scheme_host}:{port}/"))
            for line in login_lines:
                self.stdout.write(line)
            if demo_crm is not None:
                self.stdout.write(self.demo_crm_lines(demo_crm))
            self.stdout.write("Press Ctrl-C to stop.\n")
            self.stdout.flush()
        else:
            self.stderr.write(
                f"The web server did not open port {port} within 30 seconds; see its output above."
            )
        exit_code = supervisor.supervise()
        if exit_code:
            sys.exit(exit_code)

    def ensure_demo(self, no_demo: bool) -> list[str]:
        from loopline.accounts.models import User
        from loopline.platform import demo

        if no_demo:
            if not User.objects.exists():
                return [
                    "No users yet: create an administrator with `loopline createadmin --email you@example.com`."
                ]
            return []
        if demo.demo_business_unit() is None:
            self.stdout.write("Creating the Demo business unit with sample prospects…")
            demo.build_demo()
        password = demo.demo_password()
        admin = User.objects.filter(email=demo.DEMO_ADMIN_EMAIL).first()
        if admin is None:
            return [
                "The Demo business unit exists but its administrator was removed; "
                "create one with `loopline createadmin`."
            ]
        lines = ["Log in as the demo administrator:", f"  email:    {demo.DEMO_ADMIN_EMAIL}"]
        if admin.check_password(password):
            lines.append(f"  password: {password}")
        else:
            lines.append(
                "  password: (changed since it was generated; reset it with "
                f"`loopline createadmin --email {demo.DEMO_ADMIN_EMAIL} --password ...`)"
            )
        lines.append(f"  (also marketing@, manager@ and sales@{demo.DEMO_DOMAIN} with the same password)")
        return lines

    def ensure_demo_crm(self, crm_port: int):
        """Initialise and seed the demo CRM once and point the Demo BU's connector at it (left paused, [R2])."""
        from loopline.connector import demo as crm_demo

        data_dir = settings.DATA_DIR / "crmsandbox"
        if not (data_dir / "config.json").exists() and not port_free("127.0.0.1", crm_port):
            self.stderr.write(f"Port {crm_port} is in use: the demo CRM is not started (use --crm-port).")
            return None
        try:
            if not (data_dir / "config.json").exists():
                self.stdout.write("Creating the demo CRM (crmsandbox) with sample leads and contacts…")
            crm = crm_demo.ensure_sandbox(crm_port)
            crm_demo.ensure_demo_connector(crm)
        except Exception as exc:  # the demo CRM is optional: Loopline still runs without it
            self.stderr.write(f"The demo CRM could not be prepared: {exc}")
            return None
        return crm

    def demo_crm_lines(self, crm) -> str:
        from loopline.connector import demo as crm_demo

        if not wait_for_port("127.0.0.1", crm.port, timeout=30):
            return f"Demo CRM: did not start on port {crm.port}; see its output above."
        admin = crm.info.get("admin", {})
        status = crm_demo.verify_demo_connector()
        connections.close_all()
        return "\n".join([
            f"Demo CRM (crmsandbox) at {crm.info.get('instance_url', '')}/ui/ — "
            f"log in as {admin.get('username', '')} / {admin.get('password', '')}",
            status,
        ])

    def child_specs(self, host: str, port: int, opts) -> list[ChildSpec]:
        from django.tasks import task_backends

        from loopline.platform.celery_backend import CeleryBackend

        env = {"LOOPLINE_LOG_FORMAT": os.environ.get("LOOPLINE_LOG_FORMAT", "console")}
        server_name, web_argv = web_server_argv(host, port, opts["web_workers"], opts["web_threads"])
        specs = [ChildSpec(f"web ({server_name})", web_argv, env)]
        backend = task_backends["default"]
        runs_inline = not backend.supports_defer and not isinstance(backend, CeleryBackend)
        if not opts["no_worker"] and not runs_inline:
            specs.append(ChildSpec("worker", ["loopline", "worker"], env))
        if not opts["no_scheduler"]:
            specs.append(ChildSpec("scheduler", ["loopline", "scheduler"], env))
        # Turns staged page-view hits into visitors and activities (a schedule also drains them if this stops).
        specs.append(ChildSpec("tracking-ingest", ["loopline", "tracking-ingest"], env))
        if not opts["no_demo"]:
            # A sample website on another origin, with the tracker and a form, to watch a visit become a prospect.
            specs.append(ChildSpec("demo-site", ["loopline", "demo-site", "--port", str(opts["demo_site_port"])], env))
        specs.extend(extra_children())
        return specs


class Supervisor:
    def __init__(self, specs: list[ChildSpec], out, err, *, stop_timeout: float = 20.0):
        self.children = [Child(spec, out) for spec in specs]
        self.out = out
        self.err = err
        self.stop_timeout = stop_timeout
        self.stopping = False

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def start_all(self, only: list[ChildSpec] | None = None) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        for child in self.children:
            if child.proc is None and (only is None or child.spec in only) and not self.stopping:
                child.start()

    def supervise(self) -> int:
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                if child.proc is None:
                    if now >= child.next_start:
                        child.start()
                        self.out.write(f"[run] restarted {child.spec.name}")
                    continue
                code = child.proc.poll()
                if code is None:
                    if child.failures and now - child.started_at > QUICK_EXIT_SECONDS:
                        child.failures = 0
                    continue
                child.signal(signal.SIGKILL)  # leftovers of the dead child's group, if any
                uptime = now - child.started_at
                child.failures = child.failures + 1 if uptime < QUICK_EXIT_SECONDS else 1
                delay = min(MAX_RESTART_DELAY, 0.5 * 2 ** (child.failures - 1))
                self.err.write(
                    f"[run] {child.spec.name} exited with code {code} after {uptime:.0f}s; "
                    f"restarting in {delay:.1f}s"
                )
                child.proc = None
                child.next_start = now + delay
            time.sleep(0.2)
        return self.stop_all()

    def stop_all(self) -> int:
        self.out.write("\nStopping Loopline…")
        # One SIGTERM per child group: the worker finishes its current task, granian drains its requests.
        for child in self.children:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and any(c.alive for c in self.children):
            time.sleep(0.1)
        for child in self.children:
            if child.alive:
                self.err.write(
                    f"[run] {child.spec.name} did not stop within {self.stop_timeout:.0f}s; killing it"
                )
            child.signal(signal.SIGKILL)  # also reaps any process the child left behind in its group
        for child in self.children:
            if child.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=5)
        self.out.write("Stopped.")
        return 0
