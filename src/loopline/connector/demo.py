"""The demo's CRM: a local ``crmsandbox`` org, seeded, with the Demo business unit's connector pointed at it.

The sandbox is a separate program reached only over HTTPS (it is never imported); we drive its CLI. The connector is
left paused, as every new connector is ([R2]); the README explains how to resume it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

DEMO_CRM_PORT = 8443
SEED_ARGS = ["--leads", "120", "--contacts", "80", "--accounts", "40", "--opportunities", "30",
             "--campaigns", "5", "--users", "3", "--seed", "11"]


@dataclass(frozen=True)
class DemoCrm:
    data_dir: Path
    port: int
    info: dict

    @property
    def serve_argv(self) -> list[str]:
        return ["crmsandbox", "serve", "--data", str(self.data_dir), "--port", str(self.port)]


def _sandbox(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "crmsandbox", *args], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"crmsandbox {args[0]} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def ensure_sandbox(port: int = DEMO_CRM_PORT) -> DemoCrm:
    """Initialise and seed the demo org once (kept in DATA_DIR/crmsandbox)."""
    data_dir = Path(settings.DATA_DIR) / "crmsandbox"
    if not (data_dir / "config.json").exists():
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        init_args = ["init", "--data", str(data_dir), "--port", str(port)]
        try:
            _sandbox(*init_args, "--loopline-fields")
        except RuntimeError:
            _sandbox(*init_args)  # an older sandbox without the Loopline fields option
        _sandbox("seed", "--data", str(data_dir), *SEED_ARGS)
    info = json.loads(_sandbox("info", "--data", str(data_dir)))
    return DemoCrm(data_dir=data_dir, port=port, info=info)


def ensure_demo_connector(crm: DemoCrm) -> bool:
    """Create the Demo BU's connector (paused) and register its certificate with the sandbox. True when created."""
    from loopline.accounts.access import Access
    from loopline.accounts.models import User
    from loopline.platform import demo

    from . import services
    from .models import Connector

    bu = demo.demo_business_unit()
    admin = User.objects.filter(email=demo.DEMO_ADMIN_EMAIL).first()
    if bu is None or admin is None or Connector.objects.filter(bu=bu).exists():
        return False
    access = Access.for_user(admin, bu)
    connector = services.create_connector(access)
    cert_file = crm.data_dir / "loopline-demo-connector.pem"
    cert_file.write_text(connector.certificate)
    app = json.loads(_sandbox("apps", "add", "--data", str(crm.data_dir), "--name", "Loopline demo",
                              "--cert", str(cert_file)))
    services.update_connection(access, connector, {
        "login_url": crm.info["login_url"],
        "consumer_key": app["consumer_key"],
        "username": crm.info["integration_user"]["username"],
        "ca_file": crm.info["ca_file"],
    })
    from .sync import manual

    # The demo CRM's "Send to Loopline" button posts here ([R3]).
    send_url = f"{settings.PUBLIC_BASE_URL}/connector/{bu.slug}/send-to-loopline"
    _sandbox("config", "--data", str(crm.data_dir), "--set", f"loopline_send_url={send_url}",
             "--set", f"loopline_send_token={manual.send_to_loopline_token(connector)}")
    services.update_settings(access, connector, {
        "score_field": "Loopline_Score__c", "grade_field": "Loopline_Grade__c", "campaign_field": "Loopline_Campaign__c",
    })
    return True


def verify_demo_connector() -> str:
    """Once the sandbox listens: verify the demo connector (it stays paused). Returns a line for the terminal."""
    from loopline.accounts.access import Access
    from loopline.accounts.models import User
    from loopline.platform import demo

    from . import services
    from .models import Connector

    bu = demo.demo_business_unit()
    connector = Connector.objects.filter(bu=bu).first() if bu else None
    admin = User.objects.filter(email=demo.DEMO_ADMIN_EMAIL).first()
    if bu is None or connector is None or admin is None:
        return ""
    if connector.last_verified_at:
        return f"CRM connector: {connector.get_status_display().lower()} (verified)"
    ok, message = services.verify_connection(Access.for_user(admin, bu), connector)
    return f"CRM connector: paused — {message}" if ok else f"CRM connector: not verified — {message}"
